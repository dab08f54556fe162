"""Studies: declarative ablations (cells × search spaces), run on Ray Tune with Optuna."""

from pal_study.study.space import Param, SearchSpace, active_params, suggest
from pal_study.study.spec import Cell, Study, StudySpec, describe, load_study

__all__ = ["Cell", "Param", "SearchSpace", "Study", "StudySpec", "active_params", "describe", "load_study", "suggest"]
