"""Bridges to the tools IR people already use: PyTerrier and the Hugging Face Hub (``irds:`` collections live in
``io/irds.py``, because the catalog resolves them; MLflow logging in ``stages/train_tracking.py``, because it
runs inside the Train worker).

Each module imports its library lazily (an optional extra of the package) and uses only the lower layers
(``io``, ``models``, ``runtime``) and the contracts.
"""
