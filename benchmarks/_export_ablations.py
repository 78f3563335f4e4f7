"""Timing-only variants of a compact export, each with one part cut out (shared by the edge benchmarks)."""


def ablated_exports(model, unshifted, **convert_kwargs):
    """Exports of the compact path with one part cut out: {name: flatbuffer}.

    `model`'s `convert(model, **convert_kwargs)` with `no_predictors` (constant
    logits instead of the mask predictors), `constant_masks` (the same masks as
    constants of the graph: the converter folds every top-k, index and weight
    gather, leaving the statically pruned network with the same executed MACs,
    so `auto`'s time minus its time is what deciding per image costs),
    `static_weights` (capacity slots
    fixed to the first channels, so the converter folds every weight gather
    into constants), `static_depthwise` (compact depthwise convs with constant
    filters, which XNNPACK runs instead of the builtin kernel), and
    `no_constants`: `unshifted`, the same gated network and masks with batch
    norm's shifts 0, so no uniform channel is carried. Timings only: they
    compute other things than the model.
    """
    import unittest.mock

    import tensorflow as tf

    from ftwt_keras.export import tflite

    def constant_logits(builder, layer, x):
        bias = tf.constant(builder.predictors[layer.name][2][None])
        # Masks from a run-time value, so that the converter keeps their gathers and top-k: it drops
        # the product with 0 (and with it the read of the input) only after it would have folded them.
        return bias + 0.0 * tf.reduce_sum(x.values[:, :1, :1, :1])

    def constant_masks(builder, layer, x):
        return tf.constant(builder.predictors[layer.name][2][None])  # nothing run-time: all of it folds

    def first_channels(builder, unit, mask, capacity):
        if unit.layer.capacity is None or unit.layer.capacity > capacity:  # the flags `top_channels` raises
            builder.overflows.append(tf.reduce_sum(mask.values) > capacity)
        return tf.range(capacity, dtype=tf.int32)

    chained_depthwise = tflite._Builder.chained_depthwise

    def constant_filters(builder, unit, activation, x, mask):
        out = chained_depthwise(builder, unit, activation, x, mask)
        if out.channels is not x.channels:  # not compact: computed as before
            return out
        conv = unit.layer.conv
        width = x.values.shape[-1]
        kernel = tf.constant(unit.kernel[..., :width, :])  # the first filters, whatever channels are present
        y = tf.nn.depthwise_conv2d(x.values, kernel, [1, *conv.strides, 1], conv.padding.upper())
        bias = tf.gather(tf.constant(unit.bias), x.channels) * tf.gather(mask.row, x.channels)
        return tflite.Compact(activation(y + bias), x.channels, unit.filters, x._positions, constants=out.constants)

    patches = {
        "no_predictors": ("predictor_logits", constant_logits),
        "constant_masks": ("predictor_logits", constant_masks),
        "static_weights": ("top_channels", first_channels),
        "static_depthwise": ("chained_depthwise", constant_filters),
    }
    flatbuffers = {}
    for name, (method, replacement) in patches.items():
        with unittest.mock.patch.object(tflite._Builder, method, replacement):
            flatbuffers[name] = tflite.convert(model, **convert_kwargs)
    flatbuffers["no_constants"] = tflite.convert(unshifted, **convert_kwargs)
    return flatbuffers
