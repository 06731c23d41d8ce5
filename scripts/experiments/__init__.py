"""Experiments that train (hours, the real data), run from the repository root as
``python -m scripts.experiments.<name>``: ``ablation`` (the recipe's one-change variants) and
``distill_recipe`` (distillation side by side). Both resume: a finished fit is not trained again."""
