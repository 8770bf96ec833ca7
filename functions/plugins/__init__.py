"""The plugins function: each tenant's hooks before and after the model; its built-in kinds are in kinds/."""
