// Conditional nodes in a captured decode graph (FFNSKIP_CUDA_GRAPH_IF=1).
//
// Without them a left-out FFN still costs its kernels' launches: each starts, reads its
// skip word and returns. With them each FFN (from layer 1 on) is the body of an IF node
// of the step's graph, and the gate kernel of the layer before sets the node's condition
// from the FFN's skip word once it has decided; a left-out FFN then launches nothing.
//
// While `outer` is being captured:
//   cudaGraphConditionalHandle c = new_condition(outer);   // before the kernel that sets it
//   IfBody body(outer, c, body_stream);   // kernels issued on body_stream from here ...
//   body.end();                           // ... are the node's body
#pragma once

#include <cuda_runtime.h>

namespace ffnskip {
namespace cuda {

// A condition of the graph being captured on `capturing`. Each launch of the graph
// starts it at 1 (run), so a body whose condition no kernel sets still runs and its
// kernels still read their skip words.
cudaGraphConditionalHandle new_condition(cudaStream_t capturing);

// Appends an IF node on `condition` to the capture of `outer` and captures the work
// issued on `body_stream` until end() into the node's body.
class IfBody {
  public:
    IfBody(cudaStream_t outer, cudaGraphConditionalHandle condition, cudaStream_t body_stream);
    void end();
    ~IfBody();   // ends the body's capture if end() was not reached (an exception)
    IfBody(const IfBody&) = delete;
    IfBody& operator=(const IfBody&) = delete;

  private:
    cudaStream_t body_stream_ = nullptr;
};

}  // namespace cuda
}  // namespace ffnskip
