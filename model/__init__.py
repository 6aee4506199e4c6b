"""The default training target: a small GPT trained for a fixed wall-clock budget, scored by val_bpb.

``model.prepare`` builds the dataset and tokenizer, ``model.data`` loads them for training and
evaluation, ``model.gpt`` is the network, ``model.optim`` the optimizers, ``model.train`` the run.
"""
