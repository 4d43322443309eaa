"""Layers shared by the models: graph propagation, prototype hypergraphs, optimal transport."""
