"""The admin function: tenants, keys, roles, the audit log; its CLI commands are in commands.py."""
