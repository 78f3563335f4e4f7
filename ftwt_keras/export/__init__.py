"""Exporting FTWT models for on-device inference.

`ftwt_keras.export.tflite` converts an `FTWTModel` to a LiteRT (TFLite)
flatbuffer that computes only each image's active filters (needs TensorFlow).
Its parts: `checks` (what the exporter accepts), `calibration` (keep ratios
and capacities from images), `planning` (which layers compute compactly,
which gates pay), `measured` (which gates pay, by timing on this machine),
`builder` (the TensorFlow graph), `runtime` (running and timing a `.tflite`)
and `drawn_masks` (stand-ins for trained masks).
"""

from ftwt_keras.export.tflite import (
    CAPACITY_STDS,
    Calibration,
    ExportError,
    TimedPlan,
    calibrate,
    cap_compacted_gates,
    check_ftwt_model,
    compacted_layers,
    convert,
    export_file,
    gate_counts,
    interpreter,
    kept_gates,
    layer_times,
    load_calibration_images,
    load_ftwt_model,
    measured_paying_gates,
    op_names,
    paying_gates,
    randomize_batch_norm,
    run,
    save,
    set_keep_ratio,
    statically_pruned_layers,
    time_invokes,
    time_side_by_side,
)

__all__ = [
    "CAPACITY_STDS",
    "Calibration",
    "ExportError",
    "TimedPlan",
    "calibrate",
    "cap_compacted_gates",
    "check_ftwt_model",
    "compacted_layers",
    "convert",
    "export_file",
    "gate_counts",
    "interpreter",
    "kept_gates",
    "layer_times",
    "load_calibration_images",
    "load_ftwt_model",
    "measured_paying_gates",
    "op_names",
    "paying_gates",
    "randomize_batch_norm",
    "run",
    "save",
    "set_keep_ratio",
    "statically_pruned_layers",
    "time_invokes",
    "time_side_by_side",
]
