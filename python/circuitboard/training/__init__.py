"""Training dynamics: record a network while it trains, load runs, build runs from checkpoints."""

from ._checkpoints import from_checkpoints
from ._correlate import KpiCorrelation, correlate, load_kpi_correlation
from ._dataflow import dataflow, record_dataflow
from ._flow import DataFlow
from ._recorder import TrainingRecorder
from ._run import TrainingRun, load_training_run, trials
from ._stats import STATS
from ._toy import AttentionOnlyTransformer, repeated_sequences

__all__ = [
    "STATS",
    "AttentionOnlyTransformer",
    "DataFlow",
    "KpiCorrelation",
    "TrainingRecorder",
    "TrainingRun",
    "correlate",
    "dataflow",
    "from_checkpoints",
    "load_kpi_correlation",
    "load_training_run",
    "record_dataflow",
    "repeated_sequences",
    "trials",
]
