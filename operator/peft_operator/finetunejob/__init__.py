"""The FineTuneJob controller: validation, plan and Job builders, status logic, and the handlers."""
