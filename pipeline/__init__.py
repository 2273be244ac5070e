"""The 20 Newsgroups pipeline: one module per DVC stage, plus the libraries they share."""
import os

# oneDNN, behind TensorFlow's CPU kernels and matrix products, picks its code by the CPU's
# instruction set at run time, and the kernels round differently. Capped at one level every
# x86-64 CPU of the last decade has, the CBOWs train to the same weights with and without
# AVX-512; the convolutions and the LSTM still do not (docs/reproducibility.md). Read before
# TensorFlow's first op; a value the user set wins.
CPU_ISA = "AVX2"
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", CPU_ISA)
# TensorFlow's C++ log lines (oneDNN, CPU features) are notices, not errors, even those it logs at
# ERROR level: on an AVX-512 CPU under the cap above, every masked LSTM logs "oneDNN supports
# DT_BOOL only on platforms with AVX-512". Real failures reach Python as exceptions. The notices
# printed while TensorFlow loads are hidden by common.import_tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# MLflow's INFO lines (database set-up, input-example validation) and artifact progress bars on
# every stage's and the CLI's stderr; its warnings stay.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
