"""The accelerator Job: command, input pipeline, NeuMF, evaluation, checkpoints (DESIGN.md).

trainer/train.py holds the configuration and the training loop; the other modules are the
pieces it calls: model.py (NeuMF), data.py (epoch input pipeline), evaluation.py (HR/NDCG),
strategy.py (TPU / GPUs / CPU), checkpoint.py (bucket checkpoints and resume).
"""
