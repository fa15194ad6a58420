"""The one train-step builder (value_and_grad → gradient reduction → loss scaling → update).

Every recipe builds its steps here; the GAN recipe calls it twice (G, then D on
`ops.stop_gradient(fake)`), each with its own optimizer, so every step compiles to its own graph.
Only MindSpore 2.2 APIs: ms.value_and_grad(has_aux), nn.DistributedGradReducer,
ms.amp.DynamicLossScaler / all_finite, ms.jit."""
from __future__ import annotations

import functools
from typing import Callable, Union

import numpy as np

# Dynamic scaling defaults (the usual fp16 values): start high, halve on overflow, double after
# this many clean steps.
DYNAMIC_SCALE = 2.0 ** 16
DYNAMIC_FACTOR = 2
DYNAMIC_WINDOW = 1000


def parse_loss_scale(value) -> Union[float, str]:
    """Config `train.loss_scale`: a number >= 1 (static) or 'dynamic'."""
    from src.errors import UserError

    if isinstance(value, str):
        if value.strip().lower() == "dynamic":
            return "dynamic"
        try:
            value = float(value)
        except ValueError:
            raise UserError("train.loss_scale must be a number >= 1 or 'dynamic', got %r"
                            % value) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1.0:
        raise UserError("train.loss_scale must be a number >= 1 or 'dynamic', got %r" % (value,))
    return float(value)


class _UnusedSparseAdamNotice:
    """Drops MindSpore 2.8's "'FusedSparseAdam' is deprecated" record. nn.Adam constructs that
    kernel for sparse gradients, which no net here produces (it is never run); the notice
    comes from constructing it, so every job printed it."""

    @staticmethod
    def filter(record) -> bool:
        return "'FusedSparseAdam' is deprecated" not in record.getMessage()


def adam(params, **kwargs):
    """nn.Adam(params, **kwargs), without MindSpore's notice about a kernel it never runs."""
    from mindspore import nn

    try:
        from mindspore import log as ms_log
        logger = ms_log._get_logger()  # MindSpore's own Python logger (its "[WARNING] ME" lines)
    except (ImportError, AttributeError):  # another MindSpore layout: the notice may show
        return nn.Adam(params, **kwargs)
    logger.addFilter(_UnusedSparseAdamNotice)
    try:
        return nn.Adam(params, **kwargs)
    finally:
        logger.removeFilter(_UnusedSparseAdamNotice)


@functools.cache
def _step_classes():
    """Defined on first use so that importing this module does not import MindSpore."""
    from mindspore import nn, ops
    import mindspore as ms

    class _EagerStep(nn.Cell):
        # A Cell rather than a closure: each instance is its own graph (the GAN has two), and
        # MindSpore does not warn about "recompiling" a Cell the way it does for a function
        # object created twice from one `def`.
        def __init__(self, grad_fn, optimizer, reducer, scaler):
            super().__init__(auto_prefix=False)
            self.grad_fn = grad_fn
            self.optimizer = optimizer
            self.reducer = reducer
            self.scaler = scaler
            # Ascend's overflow check reads the device's float status, which is per device:
            # ranks must agree on skipping a step or the replicas drift apart.
            self.flag_reduce = ops.AllReduce() if reducer is not None else None
            # The returned loss is the mean over ranks, so every rank sees the same value: a
            # NaN on one rank's batch stops all ranks together instead of leaving the others
            # blocked in the next collective.
            self.world = 1.0
            if reducer is not None:
                from mindspore.communication import get_group_size
                self.world = float(get_group_size())

        def construct(self, *inputs):
            outputs, grads = self.grad_fn(*inputs)
            loss = outputs[0]
            if self.reducer is not None:
                grads = self.reducer(grads)
            if self.scaler is not None:
                loss = self.scaler.unscale(loss)
                grads = self.scaler.unscale(grads)
            finite = ms.amp.all_finite(grads)
            if self.flag_reduce is not None:
                overflow = self.flag_reduce(ops.logical_not(finite).astype(ms.float32))
                finite = overflow < 0.5
            if self.scaler is not None:
                self.scaler.adjust(finite)
            if finite:
                loss = ops.depend(loss, self.optimizer(grads))
            if self.flag_reduce is not None:
                loss = self.flag_reduce(loss) / self.world
            return (loss,) + tuple(outputs[1:])

    class _JitStep(_EagerStep):
        # Compiled in PYNATIVE_MODE too (GRAPH_MODE compiles every Cell anyway).
        construct = ms.jit(_EagerStep.construct)

    return _EagerStep, _JitStep


class TrainStep:
    """Callable `step(*inputs) -> (loss, *aux)`: one update of `optimizer.parameters`.

    `loss` is the unscaled loss Tensor. A step whose gradients are not all finite is skipped
    (parameters and optimizer state unchanged); with dynamic scaling the scale also halves.
    numpy inputs are converted to Tensors."""

    def __init__(self, forward_fn: Callable, optimizer, *, distributed: bool = False,
                 loss_scale: Union[float, str] = 1.0, jit: bool = True):
        import mindspore as ms
        from mindspore import nn

        _EagerStep, _JitStep = _step_classes()
        self.optimizer = optimizer
        self.distributed = bool(distributed)
        self.jit = bool(jit)
        loss_scale = parse_loss_scale(loss_scale)
        self.scaler = None
        if loss_scale == "dynamic":
            self.scaler = ms.amp.DynamicLossScaler(DYNAMIC_SCALE, DYNAMIC_FACTOR, DYNAMIC_WINDOW)
        elif loss_scale != 1.0:
            self.scaler = ms.amp.StaticLossScaler(loss_scale)
        scaler = self.scaler

        if scaler is None:
            scaled_forward = forward_fn
        else:
            def scaled_forward(*inputs):
                out = forward_fn(*inputs)
                return (scaler.scale(out[0]),) + tuple(out[1:])

        grad_fn = ms.value_and_grad(scaled_forward, None, optimizer.parameters, has_aux=True)
        # mean=True: data parallel averages gradients, so the learning rate does not depend on
        # the number of devices (the batch per device is what the config sets).
        reducer = (nn.DistributedGradReducer(optimizer.parameters, mean=True) if distributed
                   else None)

        cls = _JitStep if jit else _EagerStep
        self._step = cls(grad_fn, optimizer, reducer, scaler)
        self._tensor = ms.Tensor

    @property
    def scale_value(self) -> float:
        """Current loss scale (1.0 without scaling)."""
        if self.scaler is None:
            return 1.0
        return float(self.scaler.scale_value.asnumpy())

    def __call__(self, *inputs):
        args = tuple(self._tensor(x) if isinstance(x, np.ndarray) else x for x in inputs)
        return self._step(*args)


def prefix_parameter_names(nets: dict) -> None:
    """Give each net's parameters the prefix `<key>.` (`g.`, `d.`). A graph that uses several
    nets (the GAN's G step runs D) needs unique parameter names, and two separately built nets
    both have `weight`s. Call it before creating the optimizers, which name their moments
    after the parameters. Checkpoints are unaffected (they use names relative to each cell)."""
    for key, net in nets.items():
        net.update_parameters_name("%s." % key)


def build_train_step(forward_fn: Callable, optimizer, *, distributed: bool = False,
                     loss_scale: Union[float, str] = 1.0, jit: bool = True) -> TrainStep:
    """`forward_fn(*inputs) -> (loss, *aux)` → `step(*inputs) -> (loss, *aux)` updating
    `optimizer.parameters`. `loss_scale`: 1.0 (none), a static factor, or 'dynamic'."""
    return TrainStep(forward_fn, optimizer, distributed=distributed, loss_scale=loss_scale,
                     jit=jit)
