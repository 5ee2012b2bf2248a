"""Federated QK re-training on Flower: clients re-train the QK of one shared, frozen SK on their own data.

`partition` (IID and Dirichlet client shards) and `task` (what clients and server compute) need only torch;
`client_app`, `server_app` and `simulation` need Flower (``pip install -e '.[federated]'``). See docs/federated.md.
"""
