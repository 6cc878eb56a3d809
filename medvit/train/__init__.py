"""The one trainer (`fit`) and its parts."""
from medvit.train.loop import Trainer, fit

__all__ = ["Trainer", "fit"]
