"""The AdapterDeployment controller: engine Deployment builders, adapter resolution, the agent client,
status logic, and the reconciler that makes every ready pod's loaded set equal to the spec."""
