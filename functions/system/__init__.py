"""The system function: facts about this deployment."""
