#include "cuda/graph-if.cuh"

#include <string>

#include "cuda/cuda-common.cuh"

namespace ffnskip {
namespace cuda {

namespace {

// The graph being captured on `s` and the nodes its next node will depend on.
struct CaptureState {
    cudaGraph_t graph = nullptr;
    const cudaGraphNode_t* deps = nullptr;
    size_t n_deps = 0;
};

CaptureState capture_state(cudaStream_t s) {
    CaptureState c;
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
#if CUDART_VERSION >= 13000
    // The edge data must be asked for: with programmatic launches some edges carry it.
    const cudaGraphEdgeData* edges = nullptr;
    FFNSKIP_CUDA_CHECK(cudaStreamGetCaptureInfo(s, &status, nullptr, &c.graph, &c.deps, &edges, &c.n_deps));
#else
    FFNSKIP_CUDA_CHECK(cudaStreamGetCaptureInfo(s, &status, nullptr, &c.graph, &c.deps, &c.n_deps));
#endif
    if (status != cudaStreamCaptureStatusActive)
        throw Error("CUDA backend: internal error: a conditional node outside a graph capture");
    return c;
}

}  // namespace

cudaGraphConditionalHandle new_condition(cudaStream_t capturing) {
    const CaptureState c = capture_state(capturing);
    cudaGraphConditionalHandle handle = 0;
    const cudaError_t err = cudaGraphConditionalHandleCreate(&handle, c.graph, 1, cudaGraphCondAssignDefault);
    if (err != cudaSuccess)
        throw Error(std::string("FFNSKIP_CUDA_GRAPH_IF=1: this CUDA driver cannot make conditional graph nodes "
                                "(CUDA 12.4 or newer): ") + cudaGetErrorString(err));
    return handle;
}

IfBody::IfBody(cudaStream_t outer, cudaGraphConditionalHandle condition, cudaStream_t body_stream) {
    const CaptureState c = capture_state(outer);
    cudaGraphNodeParams params = {};
    params.type = cudaGraphNodeTypeConditional;
    params.conditional.handle = condition;
    params.conditional.type = cudaGraphCondTypeIf;
    params.conditional.size = 1;
    cudaGraphNode_t node = nullptr;
    // Full (default) edges: a programmatic edge may only join two kernel nodes.
#if CUDART_VERSION >= 13000
    FFNSKIP_CUDA_CHECK(cudaGraphAddNode(&node, c.graph, c.deps, nullptr, c.n_deps, &params));
    FFNSKIP_CUDA_CHECK(cudaStreamUpdateCaptureDependencies(outer, &node, nullptr, 1, cudaStreamSetCaptureDependencies));
#else
    FFNSKIP_CUDA_CHECK(cudaGraphAddNode(&node, c.graph, c.deps, c.n_deps, &params));
    FFNSKIP_CUDA_CHECK(cudaStreamUpdateCaptureDependencies(outer, &node, 1, cudaStreamSetCaptureDependencies));
#endif
    FFNSKIP_CUDA_CHECK(cudaStreamBeginCaptureToGraph(body_stream, params.conditional.phGraph_out[0], nullptr, nullptr,
                                                     0, cudaStreamCaptureModeThreadLocal));
    body_stream_ = body_stream;
}

void IfBody::end() {
    cudaStream_t s = body_stream_;
    body_stream_ = nullptr;
    cudaGraph_t body = nullptr;
    if (s) FFNSKIP_CUDA_CHECK(cudaStreamEndCapture(s, &body));
}

IfBody::~IfBody() {
    if (!body_stream_) return;
    cudaGraph_t body = nullptr;
    cudaStreamEndCapture(body_stream_, &body);   // unwinding: the outer capture is abandoned too
}

}  // namespace cuda
}  // namespace ffnskip
