"""`FTWTModel`'s train and test steps, one class per Keras backend.

Keras picks its trainer by backend (`keras/src/backend/<name>/trainer.py`);
`FTWTModel` does the same with these mixins. What a step computes is
backend-agnostic and lives on `FTWTModel` (`_forward_and_loss`,
`_apply_gradients`, `_update_train_metrics`, `_evaluate_batch`); here is only
what differs: how gradients are taken (a `tf.GradientTape`, `jax.grad` of a
pure function of the variables' values, torch's `backward`) and, on JAX, the
state the trainer passes in and out of a step, which holds both optimizers'
variables.
"""

import keras


class TensorFlowSteps:
    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits = self._teacher_logits(x)
        backbone, predictors = self._variables_to_train()
        with tf.GradientTape() as tape:
            loss, step = self._forward_and_loss(x, y, sample_weight, teacher_logits)
        self._apply_gradients(tape.gradient(loss, backbone + predictors), backbone, predictors)
        return self._update_train_metrics(x, y, sample_weight, step)

    def test_step(self, data):
        return self._evaluate_batch(data)


class TorchSteps:
    def train_step(self, data):
        import torch

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with torch.no_grad():
            teacher_logits = self._teacher_logits(x)
        self.zero_grad()  # torch accumulates gradients in the variables
        loss, step = self._forward_and_loss(x, y, sample_weight, teacher_logits)
        backbone, predictors = self._variables_to_train()
        loss.backward()
        with torch.no_grad():
            self._apply_gradients([variable.value.grad for variable in backbone + predictors], backbone, predictors)
        return self._update_train_metrics(x, y, sample_weight, step)

    def test_step(self, data):
        return self._evaluate_batch(data)


class JaxSteps:
    """JAX's trainer calls `train_step(state, data)`, a pure function of the state.

    Its state holds `model.optimizer`'s variables only; `_get_jax_state`,
    `jax_state_sync` and (under a `keras.distribution`)
    `_get_state_sharding_spec` append, write back and shard `gate_optimizer`'s
    too, so that the step receives and returns both (the backbone's first).
    """

    def train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_values, metrics = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits = self._teacher_logits(x)

        def loss_and_step(trainable_values):
            state = (trainable_values, non_trainable, optimizer_values, metrics)
            with self._stateless_scope(state, collect_losses=True) as scope:
                loss, step = self._forward_and_loss(x, y, sample_weight, teacher_logits)
            # Batch-norm statistics, and loss trackers that `compute_loss` updates.
            return loss, (step, _current_values(scope, self.non_trainable_variables, non_trainable),
                          _current_values(scope, self.metrics_variables, metrics))

        (_, (step, non_trainable, metrics)), gradients = jax.value_and_grad(loss_and_step, has_aux=True)(trainable)
        trainable, optimizer_values = self._stateless_apply_gradients(
            trainable, non_trainable, optimizer_values, metrics, gradients
        )
        state = (trainable, non_trainable, optimizer_values, metrics)
        with self._stateless_scope(state) as scope:
            logs = self._update_train_metrics(x, y, sample_weight, step)
        return logs, (trainable, non_trainable, optimizer_values,
                      _current_values(scope, self.metrics_variables, metrics))

    def test_step(self, state, data):
        trainable, non_trainable, metrics = state
        with self._stateless_scope((trainable, non_trainable, None, metrics), collect_losses=True) as scope:
            logs = self._evaluate_batch(data)
        return logs, (trainable, _current_values(scope, self.non_trainable_variables, non_trainable),
                      _current_values(scope, self.metrics_variables, metrics))

    def _stateless_apply_gradients(self, trainable, non_trainable, optimizer_values, metrics, gradients):
        """`_apply_gradients` as a function of values: each optimizer's `stateless_apply` on its variables."""
        position = {id(variable): index for index, variable in enumerate(self.trainable_variables)}
        backbone, predictors = self._variables_to_train()
        with self._stateless_scope((trainable, non_trainable, optimizer_values, metrics)):
            # Loss scaling reads both optimizers' scales.
            gradients = self._gradients_for_loss_scaling(
                [gradients[position[id(v)]] for v in backbone + predictors], len(backbone)
            )
        trainable = list(trainable)
        split = len(self.optimizer.variables)
        updated = []
        for optimizer, own, own_gradients, values in (
            (self.optimizer, backbone, gradients[: len(backbone)], optimizer_values[:split]),
            (self.gate_optimizer, predictors, gradients[len(backbone) :], optimizer_values[split:]),
        ):
            if own:
                indices = [position[id(v)] for v in own]
                new_values, values = optimizer.stateless_apply(values, own_gradients, [trainable[i] for i in indices])
                for index, value in zip(indices, new_values):
                    trainable[index] = value
            updated.extend(values)
        return trainable, updated

    def _stateless_scope(self, state, collect_losses=False):
        """A `StatelessScope` mapping the model's (and both optimizers') variables to the values in `state`."""
        trainable, non_trainable, optimizer_values, metrics = state
        groups = ((self.trainable_variables, trainable), (self.non_trainable_variables, non_trainable),
                  (self._optimizer_variables(), optimizer_values), (self.metrics_variables, metrics))
        mapping = [pair for variables, values in groups if values is not None for pair in zip(variables, values)]
        return keras.StatelessScope(state_mapping=mapping, collect_losses=collect_losses)

    def _optimizer_variables(self):
        optimizers = (getattr(self, "optimizer", None), getattr(self, "gate_optimizer", None))
        return [variable for optimizer in optimizers if optimizer is not None for variable in optimizer.variables]

    def _get_state_sharding_spec(self):
        trainable, non_trainable, optimizer, metrics = super()._get_state_sharding_spec()
        if self.gate_optimizer is not None:
            optimizer = list(optimizer) + [variable.value.sharding for variable in self.gate_optimizer.variables]
        return trainable, non_trainable, optimizer, metrics

    def _get_jax_state(self, trainable_variables=False, non_trainable_variables=False, optimizer_variables=False,
                       metrics_variables=False, purge_model_variables=False):
        state = super()._get_jax_state(trainable_variables, non_trainable_variables, optimizer_variables,
                                       metrics_variables, purge_model_variables)
        if not optimizer_variables or self.gate_optimizer is None:
            return state
        state = list(state)
        index = int(trainable_variables) + int(non_trainable_variables)
        state[index] = list(state[index]) + [variable.value for variable in self.gate_optimizer.variables]
        return tuple(state)

    def jax_state_sync(self):
        state = getattr(self, "_jax_state", None)
        values = None if not state or self._jax_state_synced else state.get("optimizer_variables")
        super().jax_state_sync()  # writes back the backbone optimizer's part (its zip stops there)
        if values and self.gate_optimizer is not None:
            for variable, value in zip(self.gate_optimizer.variables, values[len(self.optimizer.variables):]):
                variable.assign(value)


def _current_values(scope, variables, values):
    """The values a `StatelessScope` ends with, in the order of `variables` (unchanged ones as given)."""
    current = [scope.get_current_value(variable) for variable in variables]
    return [value if new is None else new for new, value in zip(current, values)]


class UnsupportedSteps:
    """Other backends (numpy, OpenVINO) have no Keras trainer to train with; `predict` runs."""

    def make_train_function(self, force=False):
        raise NotImplementedError(_unsupported("fit"))

    def make_test_function(self, force=False):
        raise NotImplementedError(_unsupported("evaluate"))


def _unsupported(method):
    return (f"FTWTModel.{method} runs on the TensorFlow, JAX and PyTorch backends, not on KERAS_BACKEND="
            f"{keras.backend.backend()}; the saved model runs `model(x)` and `predict` there.")


def for_backend(backend):
    """The step mixin of a Keras backend."""
    steps = {"tensorflow": TensorFlowSteps, "jax": JaxSteps, "torch": TorchSteps}
    return steps.get(backend, UnsupportedSteps)
