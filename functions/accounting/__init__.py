"""The accounting function: limits and budgets at admission, the usage ledger after the answer."""
