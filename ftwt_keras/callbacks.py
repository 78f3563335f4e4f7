"""Keras callbacks for FTWT training."""

import csv
import os
import warnings

import keras

from ftwt_keras import masks
from ftwt_keras.static_gates import decided_fraction


class FlopsLogger(keras.callbacks.Callback):
    """Logs dense MACs, executed MACs and the FLOPs reduction at each epoch end.

    Reads the `flops_reduction` metric that `FTWTModel` tracks over the epoch
    (and `val_flops_reduction` when there is validation data) and adds
    `dense_macs`, `dynamic_macs` (per image, predictors included) and their
    `val_` twins to the epoch's logs, so `History`, `CSVLogger` and
    `TensorBoard` (place this callback before them) record them. It also
    logs `gates_decided_by_weights`: the share of gates that the predictors'
    weights alone decide for every image (`ftwt_keras.static_gates`), which
    grows as predictors turn input-blind (and which the edge export prunes
    statically).

    Args:
        verbose: print one line per epoch (default True).

    Example:

    >>> logger = FlopsLogger(verbose=False)
    """

    def __init__(self, verbose=True):
        super().__init__()
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not hasattr(self.model, "dense_macs"):
            return
        dense = float(self.model.dense_macs)
        logs["dense_macs"] = dense
        logs["gates_decided_by_weights"] = decided_fraction(self.model)
        line = [f"Epoch {epoch + 1}: dense {dense / 1e6:.2f} MMACs"]
        for prefix in ("", "val_"):
            reduction = logs.get(prefix + "flops_reduction")
            if reduction is None:
                continue
            logs[prefix + "dynamic_macs"] = dense * (1.0 - float(reduction))
            line.append(
                f"{prefix or 'train_'}dynamic {logs[prefix + 'dynamic_macs'] / 1e6:.2f} "
                f"MMACs ({100 * float(reduction):.1f}% fewer)"
            )
        line.append(f"{100 * logs['gates_decided_by_weights']:.1f}% of gates decided by the weights")
        if self.verbose:
            print(" | ".join(line))


class GateCooldown(keras.callbacks.Callback):
    """Sets the gate-loss weight to 0 after a fraction of the epochs (paper: 0.5).

    Afterwards the predictors are no longer trained toward the targets while the
    backbone keeps adapting to the gates it gets. With the weight at 0 the gate
    loss trains nothing, so the callback also sets `model.train_gates = False`
    for those epochs: the train step then skips the targets and the gate loss
    (cheaper epochs, the same training but for the predictors' momentum, which
    no longer coasts on). It sets it back to True when training ends.

    Args:
        fraction: fraction of `epochs` after which the weight is 0, rounded
            down to whole epochs (a warning says when that leaves none).
        epochs: total epochs; by default the `epochs` passed to `fit`.
        weight: the gate-loss weight before the cooldown (paper: 1). It
            scales the BCE for the predictors and, in joint mode, for the
            backbone too. `FTWTModel.warm_up_gates` does not use it.
    """

    def __init__(self, fraction=0.5, epochs=None, weight=1.0):
        super().__init__()
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"`fraction` must be in [0, 1]; got {fraction}.")
        if weight < 0.0:
            raise ValueError(f"`weight` must be >= 0; got {weight}.")
        self.fraction = fraction
        self.epochs = epochs
        self.weight = float(weight)

    def _total_epochs(self):
        return self.epochs or self.params.get("epochs")

    def _gated_epochs(self):
        return int(self.fraction * self._total_epochs())

    def on_train_begin(self, logs=None):
        epochs = self._total_epochs()
        if self.fraction > 0.0 and self._gated_epochs() == 0:
            warnings.warn(
                f"GateCooldown({self.fraction:g}) over {epochs} epoch{'' if epochs == 1 else 's'} turns the gate "
                "loss off from the first epoch (the on-epochs are rounded down), so the predictors are never "
                f"trained toward their targets. Pass a fraction >= {1.0 / epochs:.3g} or train longer.",
                stacklevel=2,
            )

    def on_epoch_begin(self, epoch, logs=None):
        weight = 0.0 if epoch >= self._gated_epochs() else self.weight
        self.model.gate_loss_weight.assign(weight)
        self.model.train_gates = weight > 0.0

    def on_train_end(self, logs=None):
        self.model.train_gates = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["gate_loss_weight"] = float(keras.ops.convert_to_numpy(self.model.gate_loss_weight))


class ThresholdScheduler(keras.callbacks.Callback):
    """Sets every gated layer's target threshold `r` at the start of each epoch.

    Not in the paper, which trains at a fixed `r`: lowering `r` over the first
    epochs prunes gradually, the way `tfmot`'s pruning schedules do, so the
    backbone adapts to a few more pruned filters at a time. The new `r`
    changes the targets of training and evaluation (the compiled step is
    rebuilt when it changes); the predictors follow at the pace of their
    gate loss. The model keeps the last `r` (it is saved with the layers).

    Args:
        schedule: `schedule(epoch)` -> `r` in (0, 1] for that epoch (0-based),
            e.g. `ThresholdScheduler.linear(1.0, 0.83, epochs=2)`.

    Example:

    >>> ramp = ThresholdScheduler.linear(1.0, 0.8, epochs=2)
    >>> [round(ramp.schedule(epoch), 3) for epoch in range(4)]
    [0.9, 0.8, 0.8, 0.8]
    """

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"`schedule` must be a function epoch -> threshold; got {schedule!r}.")
        self.schedule = schedule

    @classmethod
    def linear(cls, start, end, epochs):
        """From `start` toward `end` in `epochs` equal steps, reaching `end` in epoch `epochs - 1`.

        The first epoch already trains one step below `start` (at `start`,
        e.g. r = 1, the targets would prune next to nothing).
        """
        start, end = masks.check_threshold(start, "start"), masks.check_threshold(end, "end")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"`epochs` must be a positive integer; got {epochs!r}.")
        return cls(lambda epoch: start + (end - start) * min(epoch + 1, epochs) / epochs)

    def on_train_begin(self, logs=None):
        if not getattr(self.model, "gated_layers", None):
            raise ValueError(
                f"ThresholdScheduler needs an FTWT model (ftwt_keras.gate(model)); '{self.model.name}' "
                "has no gated layer whose threshold it could set."
            )

    def on_epoch_begin(self, epoch, logs=None):
        threshold = masks.check_threshold(self.schedule(epoch), f"schedule({epoch})")
        layers = self.model.gated_layers
        if all(layer.threshold == threshold for layer in layers):
            return
        for layer in layers:
            layer.threshold = threshold
        # The threshold is a constant of the compiled steps: rebuild them.
        self.model.make_train_function(force=True)
        self.model.make_test_function(force=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["threshold"] = self.model.gated_layers[0].threshold


class SwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras's `SwapEMAWeights` for an `FTWTModel`: swaps the averages of both optimizers.

    With `use_ema=True`, an optimizer keeps a moving average of the weights it
    trains, and Keras's callback puts the averages in the model for evaluation
    (and, with `swap_on_epoch=True`, for the callbacks after it, such as
    `ModelCheckpoint`). Keras's swaps only `model.optimizer`'s: on an
    `FTWTModel` the backbone's, so the averaged backbone would be evaluated
    with the predictors' last weights. This one swaps the averages of each of
    `optimizer` and `gate_optimizer` that sets `use_ema=True` (on a plain
    model, `model.optimizer`'s, as Keras's).

    Args:
        swap_on_epoch: also swap at each epoch's end (and back at the next
            epoch's start), as Keras's.

    Example:

    >>> swap = SwapEMAWeights(swap_on_epoch=True)  # model.fit(..., callbacks=[swap, ModelCheckpoint(...)])
    """

    def _apply_to_ema_optimizers(self, tf_fn, backend_fn):
        # Keras's callback applies `tf_fn` / `backend_fn` to `model.optimizer` (or to each of a
        # MultiOptimizer's); each acts on that optimizer's own variables and averages.
        optimizers = [self.model.optimizer, getattr(self.model, "gate_optimizer", None)]
        optimizers = [getattr(optimizer, "inner_optimizer", optimizer) for optimizer in optimizers if optimizer]
        averaging = [optimizer for optimizer in optimizers if getattr(optimizer, "use_ema", False)]
        if not averaging:
            raise ValueError(
                f"SwapEMAWeights swaps in the optimizers' moving averages, but no optimizer of '{self.model.name}' "
                "keeps them: compile it with `use_ema=True` in `optimizer` and / or `gate_optimizer`."
            )
        for optimizer in averaging:
            if not hasattr(optimizer, "_model_variables_moving_average"):
                raise ValueError(
                    f"Optimizer '{optimizer.name}' has no moving averages yet: they are made when it is built, "
                    "by the first training step. Evaluate with SwapEMAWeights after training has begun."
                )
            (tf_fn if keras.backend.backend() == "tensorflow" else backend_fn)(optimizer)


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """Keras's `CSVLogger` whose appended rows keep the columns of the file they extend.

    Keras's logger takes its columns from the first epoch it logs and, when
    appending, writes no header. A run resumed (`BackupAndRestore`) after the
    logged keys changed, e.g. after `GateCooldown` stopped the gate metrics,
    then writes its rows under the killed run's header, shifted. This one
    appends under the existing header: a key the file lacks adds a column
    (the file is rewritten once, earlier rows "NA"), a column the epoch lacks
    gets "NA", as Keras's does within one run.

    Args:
        filename: the CSV file (a local path).
        separator: the field separator.
        append: extend an existing file (default True: what resuming needs);
            False overwrites it, as Keras's.

    Example:

    >>> logger = ResumableCSVLogger("/tmp/history.csv")  # with keras.callbacks.BackupAndRestore(...)
    """

    def __init__(self, filename, separator=",", append=True):
        super().__init__(filename, separator=separator, append=append)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._columns = None  # the existing file's, without "epoch"
        if self.append and not self.append_header:  # a file with a header is there
            with open(self.filename, newline="") as file:
                self._columns = next(csv.reader(file, delimiter=self.sep))[1:]

    def on_epoch_end(self, epoch, logs=None):
        if self._columns is not None and self.keys is None:
            added = sorted(set(logs or {}) - set(self._columns))
            if added:
                self._add_columns(added)
            self.keys = list(self._columns)
        super().on_epoch_end(epoch, logs)

    def _add_columns(self, added):
        self.csv_file.close()
        with open(self.filename, newline="") as file:
            rows = list(csv.DictReader(file, delimiter=self.sep))
        self._columns += added
        rewritten = self.filename + ".tmp"
        with open(rewritten, "w", newline="") as file:
            # A row longer than its header (Keras's logger wrote such rows on a resume) is cut to the
            # header's columns rather than stopping the training.
            writer = csv.DictWriter(file, ["epoch", *self._columns], restval="NA", extrasaction="ignore",
                                    delimiter=self.sep)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(rewritten, self.filename)  # a kill leaves the old file or the new one, never half of one
        self.csv_file = open(self.filename, "a", newline="")


__all__ = ["FlopsLogger", "GateCooldown", "ResumableCSVLogger", "SwapEMAWeights", "ThresholdScheduler"]
