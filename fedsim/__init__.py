"""fedsim: a federated-learning backdoor simulator on Lightning Fabric."""

__version__ = "0.1.0"
