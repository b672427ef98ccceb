"""The generator Job: ingest ratings, split them, and write eval data and training epochs.

It runs on CPU nodes only and never imports TensorFlow. See DESIGN.md for the contract
with the trainer; `generator.job` is the entry point that follows it.
"""
