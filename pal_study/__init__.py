"""pal-study: hyperparameter and ablation studies of Prototype-Anchored Learning."""

import os as _os

__version__ = "0.1.0"

# MLflow 3 sends usage telemetry to its servers from every client call and server start unless
# told not to; a study's tracking stays on the user's own store. MLFLOW_DISABLE_TELEMETRY=false
# in the environment turns it back on. (Ray's usage stats are off in pal_study.study.ray_env.)
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
