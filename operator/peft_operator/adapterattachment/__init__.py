"""The AdapterAttachment controller: tenants attach adapters to a shared AdapterDeployment (Gateway API style)."""
