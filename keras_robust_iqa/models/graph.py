"""Reading and rewriting the layer graph of any Keras 3 model, through public API only.

Every consumer of a user's model (`robustify`, `lipschitz_bound`, pruning, export) goes
through these functions, which rely on `keras.models.clone_model` (its `clone_function`
and `call_function`), `Model.layers`, `Model.inputs` / `outputs` and `Layer.output`:
- a `Sequential` model is turned into a functional one by calling its layers on a
  `keras.Input` (`as_functional`);
- nested functional or Sequential models are rewritten (`rewrite`) or opened up
  (`walk`) the same way, at any depth;
- a layer called several times (a shared layer) is cloned once, and the clone is
  called as many times;
- a subclassed model (its graph lives in Python code, not in layers) is refused
  with a `ValueError`.
"""

import keras
from keras import tree


def is_graph_model(layer):
    """A functional or Sequential model (one whose layer graph Keras records)."""
    if isinstance(layer, keras.Sequential):
        return True
    return isinstance(layer, keras.Model) and hasattr(layer, "operations")


def check_graph_model(model, what="robustify"):
    """Raise a `ValueError` unless `model` is a built functional or Sequential Keras model."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} needs a Keras model, got {type(model).__name__}.")
    if not is_graph_model(model):
        raise ValueError(
            f"{what} needs a functional or Sequential Keras model; '{model.name}' is a subclassed "
            f"model ({type(model).__name__}) whose layer graph is Python code. Rebuild it with the "
            "functional API (keras.Input and calls of its layers)."
        )
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"{what} needs a built model: Sequential model '{model.name}' has no input yet. "
            "Start it with keras.Input(shape) (or call model.build(input_shape))."
        )
    return model


def as_functional(model):
    """`model` as a functional model on the same layers (nested models stay as they are).

    A functional model is returned as it is; a Sequential one is rebuilt by calling its
    layers, in order, on a new `keras.Input` of its input shape. The layers are shared,
    weights and all.
    """
    check_graph_model(model)
    if not isinstance(model, keras.Sequential):
        return model
    spec = model.inputs[0]
    inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype)
    x = inputs
    for layer in model.layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def flat_layers(model):
    """The layers of `model` in graph order, nested functional and Sequential models opened up.

    `InputLayer`s are left out.
    """
    out = []
    for layer in model.layers:
        if is_graph_model(layer):
            out.extend(flat_layers(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


def output_layer(model):
    """The leaf layer that computes the (first) output of `model`, nested models opened up."""
    target = model.outputs[0]
    for layer in model.layers:
        if not is_graph_model(layer) and _first_output(layer) is target:
            return layer
    # Produced inside a nested model (or by a later call of a shared layer): follow the graph.
    producer = {}

    def record(layer, args, kwargs):
        outputs = layer(*args, **kwargs)
        for t in tree.flatten(outputs):
            producer[id(t)] = layer
        return outputs

    _, outputs = walk(model, record)
    return producer.get(id(tree.flatten(outputs)[0]))


def _first_output(layer):
    try:
        outputs = tree.flatten(layer.output)
    except (AttributeError, ValueError):
        return None
    return outputs[0] if outputs else None


def model_inputs_like(model):
    """New `keras.Input`s of the shapes, dtypes and names of `model`'s inputs (its structure)."""
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_input_name(model, i))
             for i, t in enumerate(model.inputs)]
    if isinstance(model, keras.Sequential):
        return fresh[0]
    return tree.pack_sequence_as(model.input, fresh)


def _input_name(model, index):
    """The name of the `InputLayer` of input `index` (None for a Sequential model's)."""
    if isinstance(model, keras.Sequential):
        return None
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) and _first_output(layer) is model.inputs[index]:
            return layer.name
    return None


def rewrite(model, clone_function, call_function, *, inputs=None, cache=None):
    """`keras.models.clone_model` on `model` and, the same way, on every nested model.

    Args:
        model: a functional or Sequential model (a Sequential one is rewritten as the
            functional model `as_functional` makes).
        clone_function: `layer -> layer`, called once for each leaf layer (a layer
            called several times gets one clone).
        call_function: `(clone, *args, **kwargs) -> outputs` for each call of a leaf
            layer in the graph (not of a nested model: those are called as they are).
        inputs: input tensors for the new top-level model (default: new `keras.Input`s
            like `model`'s).
        cache: `{id(original): clone}` shared across nesting levels.

    Returns:
        The new functional model (named as `model`).
    """
    cache = {} if cache is None else cache
    nested = set()
    source = as_functional(model)

    def clone(layer):
        if id(layer) in cache:
            return cache[id(layer)]
        if is_graph_model(layer):
            new = rewrite(layer, clone_function, call_function, cache=cache)
            nested.add(id(new))
        else:
            new = clone_function(layer)
        cache[id(layer)] = new
        return new

    def call(layer, *args, **kwargs):
        if id(layer) in nested:
            return layer(*args, **kwargs)
        return call_function(layer, *args, **kwargs)

    inputs = model_inputs_like(source) if inputs is None else inputs
    new = keras.models.clone_model(source, input_tensors=inputs, clone_function=clone, call_function=call)
    return new


def walk(model, call):
    """Re-run `model`'s graph on new inputs, nested models opened up into one flat graph.

    `call(layer, args, kwargs)` computes each leaf layer's outputs from the new tensors
    (call the layer itself, a replacement, or add layers around it); it is called once
    per call of the layer in the graph. Returns `(inputs, outputs)` of the flat graph,
    ready for `keras.Model`.
    """
    check_graph_model(model, "walking a model's graph")
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_input_name(model, i))
              for i, t in enumerate(model.inputs)]
    outputs = _run(model, inputs, call)
    return _single(inputs), _single(outputs)


def _single(tensors):
    return tensors[0] if len(tensors) == 1 else tensors


def _run(model, values, call):
    """`model`'s outputs computed from `values` (new tensors for its inputs) by `call`."""
    if isinstance(model, keras.Sequential):
        (x,) = values
        for layer in model.layers:
            x = _call(layer, (x,), {}, call)
        return [x]
    # clone_model runs the graph on stand-ins for the inputs (it must build a model from
    # them); each call is answered on the new tensors and the stand-in graph follows along.
    stand_ins = [keras.Input(batch_shape=t.shape, dtype=t.dtype) for t in model.inputs]
    real = {id(s): v for s, v in zip(stand_ins, values)}

    def call_function(layer, *args, **kwargs):
        real_args, real_kwargs = tree.map_structure(lambda t: real.get(id(t), t), (args, kwargs))
        outputs = _call(layer, real_args, real_kwargs, call)
        shadow = layer(*args, **kwargs)
        for s, v in zip(tree.flatten(shadow), tree.flatten(outputs)):
            real[id(s)] = v
        return shadow

    shadow = keras.models.clone_model(
        model, input_tensors=tree.pack_sequence_as(model.input, stand_ins),
        clone_function=lambda layer: layer, call_function=call_function,
    )
    return [real[id(t)] for t in shadow.outputs]


def _call(layer, args, kwargs, call):
    if is_graph_model(layer):
        outputs = _run(layer, [t for t in tree.flatten(args) if isinstance(t, keras.KerasTensor)], call)
        return outputs[0] if len(outputs) == 1 else outputs
    return call(layer, args, kwargs)


def tensors_in(structure):
    """The Keras tensors in a nested structure of call arguments (constants left out)."""
    return [t for t in tree.flatten(structure) if isinstance(t, keras.KerasTensor)]
