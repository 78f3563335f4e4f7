"""A trained zoo MobileNetV1 FTWT model rebuilt at another input size (shared by the edge benchmarks)."""


def mobilenet_at(model, resolution):
    """The zoo MobileNetV1 FTWT `model` rebuilt for `resolution` x `resolution` inputs, its weights copied.

    At 224, the ImageNet layout (first conv stride 2). Predictors, caps and
    frozen gates come along with the weights; accuracy at the new size means
    nothing, the times do.

    Raises:
        ValueError: `model` is not a zoo MobileNetV1 (a layer is missing).
    """
    import numpy as np

    import ftwt_keras as fk

    first = model.gated_layers[0]
    predictor = first.predictor
    classes = int(model.network.outputs[0].shape[-1])
    base = fk.models.mobilenet_v1(input_shape=(resolution, resolution, 3), num_classes=classes,
                                  alpha=first.filters / 32)
    resized = fk.gate(base, use_softmax=predictor.use_softmax, pooling=predictor.pooling,
                      predictor_rank=predictor.rank)
    resized(np.zeros((1, resolution, resolution, 3), "float32"))
    trained = {layer.name: layer for layer in model.network.layers}
    for layer in resized.network.layers:
        if layer.weights:
            if layer.name not in trained:
                raise ValueError(f"Another input size needs a zoo MobileNetV1; the model has no layer {layer.name!r}.")
            layer.set_weights(trained[layer.name].get_weights())
    for layer in resized.gated_layers:
        layer.capacity = model.network.get_layer(layer.name).capacity
    return resized
