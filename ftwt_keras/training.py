"""`FTWTModel`: a Keras model that trains its backbone and its gates together.

The FTWT train step runs the gated network once, then applies

* the task loss (the compiled loss, e.g. cross-entropy) to the backbone
  through `optimizer`, and
* the gate loss (binary cross-entropy between predictor logits and the
  self-supervised targets, averaged over the batch, summed over filters,
  averaged over gated layers) to the mask predictors through `gate_optimizer`.

One backward pass of `task_loss + gate_loss_weight * gate_loss` gives both: the
binary masks carry no gradient, and in `"decoupled"` mode each predictor reads
a stop-gradient of its input, so the gate loss cannot reach the backbone. In
`"joint"` mode it does, as in the paper. The loss math is in `keras.ops`; how
the gradient is taken is the backend's (`_train_steps`: TensorFlow, JAX and
PyTorch).
"""

import keras
import numpy as np
from keras import ops

from ftwt_keras import _train_steps, flops
from ftwt_keras.layers import PACKAGE, GatedConv, record_gates


def gate_objectives(records, all_ones=False, sample_weight=None):
    """Gate loss and gate accuracy over a pass's `GateRecord`s.

    Args:
        records: iterable of `GateRecord` holding logits, masks and targets.
        all_ones: train toward "every filter on" (predictor warm-up).
        sample_weight: optional weights of the images, `(batch,)` (or
            `(batch, ...)`, averaged per image), as `fit` passes them (and
            `class_weight` becomes them): each image's BCE is multiplied by
            its weight before the mean over the batch, as Keras weighs the task
            loss (`"sum_over_batch_size"`), so an image of weight 0 trains no
            predictor. The accuracy counts every image.

    Returns:
        `(loss, accuracy)` scalars: BCE-with-logits averaged over the batch,
        summed over filters and averaged over layers; and the fraction of
        filters whose binary decision equals the target, averaged over layers.
    """
    records = list(records)
    if not records:
        raise ValueError("The model has no gated layer: nothing to train the gates on.")
    for record in records:
        if record.target is None and not all_ones:
            raise ValueError(
                f"No target was recorded for gated layer '{record.layer.name}'; "
                "run the forward pass inside record_gates(targets=True)."
            )
    # All layers side by side, so the loss is a handful of ops, not a handful
    # per layer (per-op overhead dominates small CPU train steps). In float32,
    # as Keras computes losses, whatever the layers' mixed-precision dtype.
    def side_by_side(tensors):
        return ops.cast(ops.concatenate(tensors, axis=-1), "float32")

    logits = side_by_side([record.logits for record in records])
    decisions = side_by_side([record.mask for record in records])
    if all_ones:
        targets = ops.ones_like(logits)
    else:
        targets = side_by_side([record.target for record in records])
    layers = len(records)
    bce = ops.binary_crossentropy(targets, logits, from_logits=True)
    if sample_weight is None:
        loss = ops.sum(ops.mean(bce, axis=0)) / layers
    else:
        batch = ops.shape(bce)[0]
        weights = ops.mean(ops.reshape(ops.cast(sample_weight, "float32"), (batch, -1)), axis=1)
        loss = ops.mean(ops.sum(bce, axis=1) * weights) / layers
    # Each layer's accuracy is a mean over its own filters; then layers weigh equally.
    filter_weights = np.concatenate(
        [np.full(r.logits.shape[-1], 1.0 / (layers * r.logits.shape[-1]), "float32") for r in records]
    )
    correct = ops.cast(ops.equal(decisions, targets), "float32")
    accuracy = ops.sum(ops.mean(correct, axis=0) * filter_weights)
    return loss, accuracy


def distillation_loss(teacher_logits, student_logits, temperature=4.0):
    """Knowledge-distillation loss between two models' logits (Hinton et al., 2015).

    `KL(softmax(teacher / T) || softmax(student / T)) * T**2`, averaged over
    the batch; the `T**2` keeps its gradient's scale independent of `T`.
    Computed from log-softmaxes, so saturated logits stay finite. (Keras
    3.15's `LogitsDistillation()` applies its default `"kl_divergence"` to the
    scaled logits rather than to probabilities, hence our own.)

    Args:
        teacher_logits: `(batch, classes)` logits of the frozen teacher.
        student_logits: `(batch, classes)` logits of the model being trained.
        temperature: positive softmax temperature `T`.

    Returns:
        A scalar, 0 where the two softmaxes agree.

    Example:

    >>> import numpy as np
    >>> logits = np.array([[2.0, 0.0, -1.0]], "float32")
    >>> float(distillation_loss(logits, logits))
    0.0
    """
    # In float32, as Keras computes losses, also for 16-bit logits (mixed precision).
    teacher_log_probs = ops.log_softmax(ops.cast(teacher_logits, "float32") / temperature, axis=-1)
    student_log_probs = ops.log_softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)
    teacher_log_probs = ops.stop_gradient(teacher_log_probs)
    kl = ops.sum(ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return ops.mean(kl) * temperature**2


def _loss_scaled_together(optimizer, gate_optimizer):
    """Both optimizers in a `LossScaleOptimizer` where either is one, else both as they are.

    Keras wraps the compiled optimizer under the `mixed_float16` policy. The
    predictors' gradients come from the same scaled loss as the backbone's and
    need the same unscaling and overflow check
    (`FTWTModel._gradients_for_loss_scaling`).
    """
    wrapper = keras.optimizers.LossScaleOptimizer
    if not isinstance(optimizer, wrapper) and not isinstance(gate_optimizer, wrapper):
        return optimizer, gate_optimizer
    return tuple(o if isinstance(o, wrapper) else wrapper(o) for o in (optimizer, gate_optimizer))


def _num_replicas():
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    return 1


@keras.saving.register_keras_serializable(package=PACKAGE)
class FTWTModel(_train_steps.for_backend(keras.backend.backend()), keras.Model):
    """A gated network plus the FTWT training logic.

    Build it with `ftwt_keras.gate(base_model, ...)`, or directly from any
    functional model containing `GatedConv` layers. `model(x)`, `predict` and
    `evaluate` apply the predicted binary masks. `fit` and `evaluate` run on
    the TensorFlow, JAX and PyTorch backends.

    Args:
        network: a functional Keras model containing `GatedConv` layers.

    Metrics logged by `fit` / `evaluate` besides the compiled ones:
    `task_loss`, `gate_loss`, `gate_accuracy`, `flops_reduction` (1 -
    executed MACs / dense MACs of the predicted masks, predictors included,
    see `ftwt_keras.flops`) and `target_flops_reduction` (the same for the
    self-supervised target masks of the pass; 0 while `warm_up_gates` runs,
    which has no targets). Their gap is the predictors' error; the targets'
    own change over training is the network's drift away from
    `estimate_flops_reduction`. With `compile(teacher=...)`, `fit` also logs
    `distillation_loss`. In epochs trained with `train_gates = False` (after
    `GateCooldown`), the train-side `gate_loss`, `gate_accuracy` and
    `target_flops_reduction` are not measured and not logged; their `val_`
    twins are.

    Example:

    >>> import ftwt_keras as fk
    >>> model = fk.gate(fk.models.mobilenet_v1(alpha=0.25), threshold=0.95)
    >>> model.compile(
    ...     optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
    ...     gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"],
    ... )
    """

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        if not isinstance(network, keras.Model):
            raise ValueError(f"`network` must be a keras.Model; got {type(network).__name__}.")
        self.network = network
        if not self.gated_layers:
            raise ValueError(
                f"Model '{network.name}' has no GatedConv layer; use "
                "ftwt_keras.gate(model) to gate a plain model."
            )
        self.gate_loss_weight = keras.Variable(
            1.0, trainable=False, dtype="float32", name="gate_loss_weight"
        )
        self.gate_optimizer = None
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.gate_loss_tracker = keras.metrics.Mean(name="gate_loss")
        self.gate_accuracy_tracker = keras.metrics.Mean(name="gate_accuracy")
        self.flops_reduction_tracker = keras.metrics.Mean(name="flops_reduction")
        # The reduction the current targets ask for: the drift of the targets
        # (vs `estimate_flops_reduction`) apart from the predictors' error.
        self.target_flops_reduction_tracker = keras.metrics.Mean(name="target_flops_reduction")
        self._warming_up = False
        self._train_gates = True
        self._mac_terms = None
        if network.built:
            self.built = True

    # -- structure -------------------------------------------------------
    @property
    def gated_layers(self):
        """The `GatedConv` layers, in the network's order."""
        return [layer for layer in self.network.layers if isinstance(layer, GatedConv)]

    @property
    def predictor_variables(self):
        """Trainable variables of the mask predictors (trained by `gate_optimizer`)."""
        return [v for layer in self.gated_layers for v in layer.predictor.trainable_variables]

    @property
    def backbone_variables(self):
        """Every other trainable variable (trained by `optimizer`)."""
        predictor_ids = {id(v) for v in self.predictor_variables}
        return [v for v in self.trainable_variables if id(v) not in predictor_ids]

    @property
    def mac_terms(self):
        if self._mac_terms is None:
            self._mac_terms = flops.mac_terms(self.network)
        return self._mac_terms

    @property
    def dense_macs(self):
        """MACs per image of the ungated backbone (predictors excluded)."""
        return sum(t.dense_macs for t in self.mac_terms if t.kind != "predictor")

    @property
    def train_gates(self):
        """Whether `fit` trains the gates (default True).

        With False, the train step computes no targets and no gate loss: the
        predictors are frozen, and in `"joint"` mode the backbone no longer
        gets the gate loss's gradient either. Only the task loss trains the
        backbone, under the masks the frozen predictors give. `GateCooldown`
        sets it to False when it turns the gate loss off, which makes those
        epochs' steps cheaper; `evaluate` and validation still report the gate
        metrics against the targets.
        """
        return self._train_gates

    @train_gates.setter
    def train_gates(self, value):
        value = bool(value)
        if value == self._train_gates:
            return
        self._train_gates = value
        if self.train_function is not None:
            # The step is traced for one setting; `fit` calls `self.train_function`
            # at every step, so replacing it takes effect from the next step.
            self.make_train_function(force=True)

    def build(self, input_shape):
        if not self.network.built:
            self.network.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        self._check_inputs(inputs)
        return self.network(inputs, training=training)

    def _check_inputs(self, inputs):
        expected = tuple(self.network.inputs[0].shape)
        shape = tuple(getattr(inputs, "shape", ()))
        mismatch = len(shape) != len(expected) or any(
            e is not None and s is not None and int(e) != int(s)
            for e, s in zip(expected[1:], shape[1:])
        )
        if mismatch:
            raise ValueError(
                f"Model '{self.name}' expects images of shape (batch,) + "
                f"{expected[1:]}, raw RGB pixels; got an input of shape {shape}. "
                "Resize the images, or rebuild the model for this input shape."
            )

    # -- export --------------------------------------------------------------
    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """`keras.Model.export`; `format="litert"` writes FTWT's own `.tflite`.

        `"litert"`: `ftwt_keras.export.export_file(self, filepath, **kwargs)`,
        the batch-1 export that computes only each image's active filters
        with builtin ops (`kwargs`: its `policy`, `calibration_images`,
        `num_threads`, ...; needs TensorFlow). Keras's own LiteRT conversion
        would compute every filter and then mask it. Other formats go to
        Keras's exporters, which compute every filter and apply the masks
        (the model's logits), with the network's input as the default
        signature (a model that was never called has none of its own).

        Example:

        >>> import ftwt_keras as fk
        >>> model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
        >>> model.export("/tmp/ftwt_mobilenet.tflite", format="litert")  # doctest: +SKIP
        """
        if format == "litert":
            if input_signature is not None:
                raise ValueError(
                    "FTWT's .tflite takes the network's own input at batch size 1: leave `input_signature` out "
                    "(rebuild the network for another input size)."
                )
            from ftwt_keras.export import tflite

            path = tflite.export_file(self, filepath, **kwargs)
            if verbose is not False:
                print(f"Saved the FTWT .tflite (active filters only, batch 1) at '{path}'.")
            return path
        if input_signature is None:
            input_signature = [keras.InputSpec(shape=spec.shape, dtype=spec.dtype) for spec in self.network.inputs]
        return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)

    # -- compile / serialization -------------------------------------------
    def compile(self, optimizer="rmsprop", gate_optimizer=None, teacher=None, distillation_temperature=4.0,
                student_loss_weight=0.5, **kwargs):
        """Configures training; `gate_optimizer` trains the mask predictors.

        Args:
            optimizer: backbone optimizer (paper: SGD(0.01, momentum=0.9),
                weight decay 5e-4, steps x0.1).
            gate_optimizer: predictor optimizer; default SGD(0.1,
                momentum=0.9) as in the paper. Must be a different object.
                Under loss scaling (the `mixed_float16` policy, which makes
                Keras wrap `optimizer`, or a `LossScaleOptimizer` passed for
                either) both are `LossScaleOptimizer`s: the one scaled
                backward pass feeds both, and a step with any non-finite
                gradient is skipped by both.
            teacher: optional frozen model giving logits for the same
                inputs, typically the dense baseline the gated model came
                from. The backbone then learns from
                `student_loss_weight * loss + (1 - student_loss_weight) *
                distillation_loss` (see `distillation_loss`; not in the
                paper). The gate loss is unchanged. The teacher is not saved
                with the model: pass it again after loading to go on
                distilling.
            distillation_temperature: softmax temperature of the
                distillation loss (only with a `teacher`).
            student_loss_weight: weight of the compiled loss against the
                distillation loss, in [0, 1] (only with a `teacher`).
            **kwargs: everything else `keras.Model.compile` takes.
        """
        self._set_teacher(teacher, distillation_temperature, student_loss_weight)
        if gate_optimizer is None:
            gate_optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        gate_optimizer = keras.optimizers.get(gate_optimizer)
        super().compile(optimizer=optimizer, **kwargs)
        if gate_optimizer is self.optimizer:
            raise ValueError(
                "`gate_optimizer` must be a different optimizer object than "
                "`optimizer`: each keeps its own state for its own variables."
            )
        self.optimizer, self.gate_optimizer = _loss_scaled_together(self.optimizer, gate_optimizer)
        if self.built:
            # Build each optimizer on its own variables now, so Keras does not
            # build the backbone optimizer over the predictors too.
            self.optimizer.build(self.backbone_variables)
            self.gate_optimizer.build(self.predictor_variables)

    def _set_teacher(self, teacher, temperature, student_loss_weight):
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise ValueError(f"`teacher` must be a keras.Model giving logits; got {type(teacher).__name__}.")
        if isinstance(student_loss_weight, bool) or not 0.0 <= float(student_loss_weight) <= 1.0:
            raise ValueError(
                f"`student_loss_weight` must be in [0, 1] (1.0 ignores the teacher); got {student_loss_weight!r}."
            )
        if isinstance(temperature, bool) or not float(temperature) > 0.0:
            raise ValueError(f"`distillation_temperature` must be a positive number; got {temperature!r}.")
        if teacher is not None:
            teacher.trainable = False
            if getattr(self, "distillation_loss_tracker", None) is None:
                self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        # Set past Keras' attribute tracking: the teacher's weights are not
        # this model's (not saved with it, not trained, not in `weights`).
        object.__setattr__(self, "_teacher", teacher)
        self.distillation_temperature = float(temperature)
        self.student_loss_weight = float(student_loss_weight)

    @property
    def teacher(self):
        """The frozen model distilled from (`compile(teacher=...)`), or None."""
        return getattr(self, "_teacher", None)

    @property
    def metrics(self):
        metrics = super().metrics
        if self.teacher is None:
            # Compiled again without a teacher: drop the tracker that would log 0.
            tracker = getattr(self, "distillation_loss_tracker", None)
            metrics = [metric for metric in metrics if metric is not tracker]
        return metrics

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and self.gate_optimizer is not None:
            config["gate_optimizer"] = keras.saving.serialize_keras_object(self.gate_optimizer)
        return config

    def compile_from_config(self, config):
        config = dict(config)
        gate_optimizer = config.pop("gate_optimizer", None)
        config = keras.saving.deserialize_keras_object(config)
        if gate_optimizer is not None:
            gate_optimizer = keras.saving.deserialize_keras_object(gate_optimizer)
        self.compile(gate_optimizer=gate_optimizer, **config)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)

    # -- training ----------------------------------------------------------
    def _flops_reduction(self, gate_masks):
        """Per-image reductions (batch,), so the epoch's Mean weighs images, not batches."""
        executed = flops.executed_macs(self.mac_terms, gate_masks)
        return 1.0 - executed / float(self.dense_macs)

    def _update_gate_metrics(self, task_loss, gate_loss, gate_accuracy, gate_masks, targets):
        self.task_loss_tracker.update_state(task_loss)
        if gate_loss is not None:  # None while the gates are not trained
            self.gate_loss_tracker.update_state(gate_loss)
            self.gate_accuracy_tracker.update_state(gate_accuracy)
        self.flops_reduction_tracker.update_state(self._flops_reduction(gate_masks))
        if all(target is not None for target in targets.values()):  # none during warm-up
            self.target_flops_reduction_tracker.update_state(self._flops_reduction(targets))

    def fit(self, *args, **kwargs):
        # Keras ends `fit` with `self.optimizer.finalize_variable_values(
        # self.trainable_weights)`: with `use_ema=True` the backbone optimizer
        # would write its averages over every trainable weight in turn,
        # predictors included (a shape error, or silently wrong weights).
        # Each optimizer finalizes its own variables instead.
        optimizer = self.optimizer
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            return super().fit(*args, **kwargs)

        def finalize_each_on_its_own(_):
            type(optimizer).finalize_variable_values(optimizer, self.backbone_variables)
            self.gate_optimizer.finalize_variable_values(self.predictor_variables)

        optimizer.finalize_variable_values = finalize_each_on_its_own
        try:
            return super().fit(*args, **kwargs)
        finally:
            del optimizer.finalize_variable_values

    # The train and test steps: what they compute, on any backend. How
    # gradients are taken is the backend's (`_train_steps`).
    def _variables_to_train(self):
        """`(backbone, predictors)`: what this step updates through `optimizer` and through `gate_optimizer`."""
        if self.gate_optimizer is None:
            raise ValueError("Call model.compile(...) before fit().")
        backbone = [] if self._warming_up else self.backbone_variables
        predictors = self.predictor_variables if self._train_gates else []
        return backbone, predictors

    def _teacher_logits(self, x):
        if self.teacher is None or self._warming_up:
            return None
        return ops.stop_gradient(self.teacher(x, training=False))

    def _forward_and_loss(self, x, y, sample_weight, teacher_logits):
        """The train step's forward pass and the loss whose gradient trains both optimizers' variables.

        Returns:
            `(loss, step)`: the loss, scaled where `optimizer` scales it
            (`mixed_float16`), and a dict of what the metrics need (arrays or
            None only, so that JAX can carry it out of its gradient function).
        """
        replicas = _num_replicas()
        with record_gates(targets=self._train_gates and not self._warming_up) as recorder:
            y_pred = self(x, training=True)
        records = recorder.by_layer_name()
        gate_loss = gate_accuracy = distillation = None
        if self._train_gates:
            gate_loss, gate_accuracy = gate_objectives(records.values(), all_ones=self._warming_up,
                                                       sample_weight=sample_weight)
        if self._warming_up:
            task_loss = ops.zeros(())
            loss = gate_loss / replicas
        else:
            # compute_loss already divides by the number of replicas.
            task_loss = self._compute_loss(x, y, y_pred, sample_weight, training=True)
            loss = task_loss
            if teacher_logits is not None:
                distillation = distillation_loss(teacher_logits, y_pred, self.distillation_temperature)
                loss = self.student_loss_weight * task_loss + (1.0 - self.student_loss_weight) * distillation / replicas
            if gate_loss is not None:
                loss = loss + self.gate_loss_weight * gate_loss / replicas
        step = {
            "y_pred": y_pred, "loss": loss * replicas, "task_loss": task_loss * replicas, "gate_loss": gate_loss,
            "gate_accuracy": gate_accuracy, "distillation_loss": distillation,
            "masks": {name: record.mask for name, record in records.items()},
            "targets": {name: record.target for name, record in records.items()},
        }
        return self.optimizer.scale_loss(loss), step

    def _apply_gradients(self, gradients, backbone, predictors):
        """Each optimizer applies its part of `gradients`, those of `backbone + predictors`."""
        gradients = self._gradients_for_loss_scaling(list(gradients), len(backbone))
        if backbone:
            self.optimizer.apply_gradients(zip(gradients[: len(backbone)], backbone))
        if predictors:
            self.gate_optimizer.apply_gradients(zip(gradients[len(backbone) :], predictors))

    def _update_train_metrics(self, x, y, sample_weight, step):
        self._loss_tracker.update_state(step["loss"], sample_weight=ops.shape(step["y_pred"])[0])
        if step["distillation_loss"] is not None:
            self.distillation_loss_tracker.update_state(step["distillation_loss"])
        self._update_gate_metrics(step["task_loss"], step["gate_loss"], step["gate_accuracy"], step["masks"],
                                  step["targets"])
        logs = self.compute_metrics(x, y, step["y_pred"], sample_weight=sample_weight)
        if not self._train_gates:  # not measured this step: absent rather than a misleading 0
            for tracker in (self.gate_loss_tracker, self.gate_accuracy_tracker, self.target_flops_reduction_tracker):
                logs.pop(tracker.name, None)
        return logs

    def _gradients_for_loss_scaling(self, gradients, num_backbone):
        """Under loss scaling (mixed_float16), one backward pass feeding two `LossScaleOptimizer`s.

        The loss was scaled by the backbone optimizer's scale: the predictors'
        gradients are rescaled to the gate optimizer's. Where any gradient is
        not finite, every one is made NaN, so that both optimizers skip the
        step and halve their scale together (each alone checks only its own).
        """
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return gradients
        finite = ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in gradients if g is not None]))
        poison = ops.where(finite, 1.0, float("nan"))
        rescale = poison * self.gate_optimizer.dynamic_scale / self.optimizer.dynamic_scale
        factors = [poison] * num_backbone + [rescale] * (len(gradients) - num_backbone)
        return [None if g is None else g * factor for g, factor in zip(gradients, factors)]

    def _evaluate_batch(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with record_gates(targets=True) as recorder:
            y_pred = self(x, training=False)
        records = recorder.by_layer_name()
        gate_loss, gate_accuracy = gate_objectives(records.values(), sample_weight=sample_weight)
        replicas = _num_replicas()
        task_loss = self._compute_loss(x, y, y_pred, sample_weight, training=False)
        loss = task_loss + self.gate_loss_weight * gate_loss / replicas
        self._loss_tracker.update_state(loss * replicas, sample_weight=ops.shape(y_pred)[0])
        self._update_gate_metrics(task_loss * replicas, gate_loss, gate_accuracy,
                                  {name: record.mask for name, record in records.items()},
                                  {name: record.target for name, record in records.items()})
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        logs.pop("distillation_loss", None)  # evaluation runs no teacher: absent rather than 0
        return logs

    def warm_up_gates(self, x, steps=500, verbose="auto"):
        """Trains only the predictors toward "every filter on", for `steps` batches.

        The official code's optional head initialization: run it after
        `compile` and before `fit`, so that training starts from the dense
        network's behaviour. The backbone weights are not updated (batch-norm
        statistics are, as in training).

        Args:
            x: a dataset of `(images, labels)` batches, as for `fit`.
            steps: number of batches.
            verbose: as in `fit`.

        Returns:
            The `History` of the warm-up run.
        """
        if self.gate_optimizer is None:
            raise ValueError("Call model.compile(...) before warm_up_gates().")
        if not self._train_gates:
            raise ValueError("warm_up_gates() trains only the gates: set `model.train_gates = True` first.")
        self._warming_up = True
        self.train_function = None  # retrace the step for the warm-up branch
        try:
            return self.fit(x, epochs=1, steps_per_epoch=steps, verbose=verbose, shuffle=False)
        finally:
            self._warming_up = False
            self.train_function = None


__all__ = ["FTWTModel", "distillation_loss", "gate_objectives"]
