"""Static check: would TensorRT's ONNX parser accept every operator of an exported model?

Runs without TensorRT (it is not installable on CPU machines): the lists below are onnx-tensorrt's own
support matrix, docs/operators.md as published for TensorRT 10.15 ("TensorRT 10.15 supports operators in the
inclusive range of opset 9 to opset 24"), github.com/onnx/onnx-tensorrt. Update them together with
TENSORRT_VERSION when the serving image moves to a newer TensorRT. The check walks the graph and every
subgraph (If/Loop/Scan bodies); an operator outside the default ONNX domain, or one the matrix marks N,
fails it. Restrictions that can be decided statically for the ops our detectors use are checked too (TopK's
K must be a constant below 3840 with sorted=1).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)
SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15)"
TOPK_MAX_K = 3840

# operators.md rows marked Y
SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())

# operators.md rows marked N (kept so a report can say "listed as unsupported" rather than "unknown")
UNSUPPORTED = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat
StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

DEFAULT_DOMAINS = ("", "ai.onnx")


def _graphs(graph):
    """The graph and every subgraph nested in node attributes, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _constants(graph) -> dict:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _topk_problems(graph, constants: dict) -> list[str]:
    problems = []
    for node in graph.node:
        if node.op_type != "TopK" or node.domain not in DEFAULT_DOMAINS:
            continue
        where = f"TopK {node.name or node.output[0]!r}"
        if any(a.name == "sorted" and a.i == 0 for a in node.attribute):
            problems.append(f"{where}: sorted=0 (TensorRT needs sorted=1)")
        k = constants.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            problems.append(f"{where}: K is not a build-time constant")
        elif int(k.reshape(-1)[0]) >= TOPK_MAX_K:
            problems.append(f"{where}: K={int(k.reshape(-1)[0])} (TensorRT needs K < {TOPK_MAX_K})")
    return problems


def check_model(model) -> dict:
    """Check an ONNX model (path or ModelProto) against the support matrix; the result is JSON-able."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model
    counts: Counter = Counter()
    unsupported, problems = set(), []
    for graph in _graphs(proto.graph):
        constants = _constants(graph)
        for node in graph.node:
            op = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            counts[op] += 1
            if node.domain not in DEFAULT_DOMAINS or node.op_type not in SUPPORTED:
                unsupported.add(op)
        problems += _topk_problems(graph, constants)
    opset = max((o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), default=0)
    opset_ok = OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]
    if not opset_ok:
        problems.append(f"opset {opset} outside TensorRT {TENSORRT_VERSION}'s {OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    return {
        "tensorrt": TENSORRT_VERSION, "source": SOURCE, "opset": opset, "ops": dict(sorted(counts.items())),
        "unsupported": sorted(unsupported),
        "listed_unsupported": sorted(op for op in unsupported if op in UNSUPPORTED),
        "problems": problems, "passed": not unsupported and not problems,
    }
