"""Python functions: the system tenant's operations and operator-installed hooks. Depends on engine only."""
