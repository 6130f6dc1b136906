"""Bridges to the tools IR people already use: ir_datasets, PyTerrier, the Hugging Face Hub, MLflow.

Each module imports its library lazily (an optional extra of the package) and uses only the lower layers
(``io``, ``models``, ``runtime``) and the contracts.
"""
