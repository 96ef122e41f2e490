"""Hyperparameter search of the refresh's training settings (``flywheel tune``), with Optuna.

space      the tuned parameters, their ranges, the refinement box, trial settings
stopping   the plateau rule that ends the refinement; the divergence and median pruner
objective  one trial: train in the training subprocess, score the held-out split as the gate does
study      the stored study (SQLite): open or resume it, the coarse and refinement stages
best       the newest study's best settings for the refresh; the latest curated dataset
report     best settings, importances and trials as data and as a page
"""
