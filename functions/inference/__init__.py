"""The inference function (the RawModelService): the model registry and every backend behind it; `scaigrid models`
(commands.py) prepares the local ones."""
