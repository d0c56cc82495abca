// ffnskip public C++ API: everything an application that embeds the engine needs.
//
//   auto model = ffnskip::Model::load("model.gguf");
//   ffnskip::Session session(model, ffnskip::SessionParams{});
//   ffnskip::GenerateParams params;
//   params.max_tokens = 64;
//   session.generate("The capital of France is", params,
//                    [](const std::string& piece, int32_t token) { std::cout << piece; return true; });
//
// A Model is immutable once loaded and may be shared by any number of Sessions
// (one per thread); a Session owns its KV cache, buffers and sampler.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ffnskip {

// ---- errors -----------------------------------------------------------------
// Engine errors. Bad arguments throw std::invalid_argument; a file that is not a
// valid model throws FormatError; a missing file throws FileNotFoundError.
class Error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};
class FormatError : public Error {
  public:
    using Error::Error;
};
class FileNotFoundError : public Error {
  public:
    using Error::Error;
};

// ---- model --------------------------------------------------------------------
struct HParams {
    std::string architecture;   // general.architecture ("llama", "qwen2")
    int32_t n_vocab = 0;        // tokens in the vocabulary (rows of token_embd)
    int32_t n_ctx_train = 0;    // context length the model was trained with
    int32_t n_embd = 0;         // hidden width
    int32_t n_layer = 0;        // transformer blocks
    int32_t n_head = 0;         // query heads
    int32_t n_head_kv = 0;      // key/value heads (GQA when < n_head)
    int32_t head_dim = 0;       // width of one head (n_embd / n_head unless given)
    int32_t n_ff = 0;           // FFN hidden width
    int32_t n_rot = 0;          // dimensions of each head that RoPE rotates
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;  // 1 / linear scaling factor
    bool rope_neox = false;     // RoPE rotates pairs (i, i + n_rot/2) (qwen2), not (2i, 2i + 1)
    float rms_eps = 1e-5f;
};

struct ModelParams {
    bool use_mmap = true;       // weights used in place from a read-only mapping
};

class Model {
  public:
    static std::shared_ptr<Model> load(const std::string& path, const ModelParams& params = {});
    ~Model();

    const HParams& hparams() const;
    const std::string& path() const;
    uint64_t file_size() const;
    uint64_t weight_bytes() const;        // bytes of all tensor data

    // GGUF metadata, rendered as text (arrays shortened), in file order.
    std::vector<std::pair<std::string, std::string>> metadata() const;
    // A metadata string value, or "" when absent (e.g. "tokenizer.chat_template").
    std::string metadata_string(const std::string& key) const;

    struct TensorInfo {
        std::string name;
        std::string type;               // "Q4_1", "F32", ...
        std::vector<int64_t> shape;     // GGUF order: innermost dimension first
        uint64_t offset;                // from the start of the file
        uint64_t n_bytes;
    };
    std::vector<TensorInfo> tensors() const;

    // Tokenizer.
    std::vector<int32_t> tokenize(const std::string& text, bool add_special = true,
                                  bool parse_special = false) const;
    std::string token_to_piece(int32_t token, bool render_special = true) const;
    std::string detokenize(const std::vector<int32_t>& tokens, bool render_special = true) const;
    int32_t token_bos() const;          // -1 when the model has none
    int32_t token_eos() const;
    bool token_is_eog(int32_t token) const;   // end of generation (EOS, EOT, ...)
    int32_t n_vocab() const;

    struct Impl;
    const Impl& impl() const { return *impl_; }

  private:
    Model();
    std::unique_ptr<Impl> impl_;
};

// ---- FFN skipping -----------------------------------------------------------------
// Which feed-forward blocks (or whole layers) a decode step leaves out.
//   full       : nothing is skipped.
//   ffn_skip   : FFN-SkipLLM. After each computed FFN in the gated range, the cosine
//                between the residual after and before the FFN add is taken; the first
//                time it reaches `threshold`, the FFNs of the next `max_skip` non-cold
//                layers are skipped (the residual passes through). Attention always runs.
//   random     : each FFN of any layer is dropped with probability `target_ratio`.
//   static     : a window of `max_skip` FFNs at a random place in the non-cold region.
//   layers     : the FFNs of `layers` are skipped for every token, prompt included.
//   shortgpt   : whole layers in `layers` (attention and FFN) are removed for every
//                token, prompt included (pick them with the calibration).
//   skipdecode : whole layers skipped from the top, with a budget that grows along the
//                generated sequence; the skipped layers' keys and values are computed
//                from the exit hidden state.
enum class SkipPolicy { full, ffn_skip, random, static_window, layers, shortgpt, skipdecode };
const char* skip_policy_name(SkipPolicy policy);
SkipPolicy skip_policy_from_name(const std::string& name);   // throws std::invalid_argument

struct SkipConfig {
    SkipPolicy policy = SkipPolicy::full;
    float threshold = 0.95f;     // cosine that opens the skip window (ffn_skip)
    int32_t cold_start = 5;      // FFNs of layers [0, cold_start) always run
    int32_t cold_end = 5;        // FFNs of the last cold_end layers always run
    int32_t warmup = -1;         // first generated tokens that run in full; -1 = n_ctx / 64
    int32_t refresh_every = 6;   // after warm-up, every refresh_every-th step runs in full; 0 = never
    int32_t max_skip = -1;       // FFNs skipped per step once the gate opens; -1 = from target_ratio
    float target_ratio = 0.25f;  // wanted share of skipped FFNs over post-warm-up steps
    int32_t skipdecode_span = 256;  // skipdecode: steps over which the layer budget grows
    uint64_t seed = 0;           // random / static policies
    std::vector<int32_t> layers; // layers / shortgpt: the layers left out; ffn_skip: when not
                                 // empty, the only FFNs the gate may leave out
                                 // (e.g. those whose removal cost least in calibration)
    bool record_masks = false;   // keep the per-step skip mask in the stats
    bool record_cosines = false; // keep the per-step, per-layer cosines in the stats
    std::string surrogates;      // GGUF sidecar of low-rank FFN surrogates ("" = none): a
                                 // left-out FFN that has one runs it instead of nothing,
                                 // x' = h + b + U (V^T ffn_norm(h)) (CPU and CUDA backends)
};

// What the skip policy did during one generation (decode steps only).
struct SkipStats {
    int32_t n_layer = 0;
    int32_t n_steps = 0;              // decode steps (forward passes of one token)
    int32_t n_steps_after_warmup = 0;
    int64_t ffn_total = 0;            // FFN blocks over all decode steps
    int64_t ffn_skipped = 0;
    int64_t ffn_total_after_warmup = 0;
    int64_t ffn_skipped_after_warmup = 0;
    int64_t layers_skipped = 0;       // whole layers (shortgpt, skipdecode)
    int64_t surrogates_run = 0;       // left-out FFNs replaced by their surrogate
    std::vector<int32_t> skipped_per_layer;   // (n_layer) FFN skips per layer
    std::vector<uint8_t> masks;       // (n_steps, n_layer) 1 = FFN skipped; record_masks
    std::vector<float> cosines;       // (n_steps, n_layer) NaN where not measured; record_cosines
    double skip_ratio() const { return ffn_total ? (double)ffn_skipped / ffn_total : 0.0; }
    double skip_ratio_after_warmup() const {
        return ffn_total_after_warmup ? (double)ffn_skipped_after_warmup / ffn_total_after_warmup : 0.0;
    }
};

// ---- generation -----------------------------------------------------------------
struct SessionParams {
    int32_t n_ctx = 0;          // KV cache length; 0 = min(n_ctx_train, 4096)
    int32_t n_threads = 0;      // decode threads; 0 = all cores
    int32_t n_threads_batch = 0;  // prompt-processing threads; 0 = n_threads
    int32_t n_batch = 512;      // prompt tokens per forward pass
    SkipConfig skip;            // default for generate calls that give none
    std::string backend = "cpu";  // "cpu", "cuda" or "auto" (the GPU when usable)
};

struct SamplingParams {
    float temperature = 0.8f;   // 0 = greedy (argmax, ties to the lowest id)
    int32_t top_k = 40;         // 0 = off
    float top_p = 0.95f;        // 1 = off
    float min_p = 0.05f;        // 0 = off
    float repeat_penalty = 1.0f;  // 1 = off; llama.cpp's penalty on the last repeat_last_n tokens
    int32_t repeat_last_n = 64;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    int64_t seed = -1;          // -1 = random; same seed, same text
};

struct GenerateParams {
    int32_t max_tokens = 128;   // < 0 = until EOS or the context is full
    SamplingParams sampling;
    std::vector<std::string> stop;   // stop strings (not included in the output)
    bool ignore_eos = false;
    bool add_special = true;    // add BOS/EOS as the model's metadata asks
    bool parse_special = false; // "<|im_start|>" in the prompt becomes one special token
    bool use_session_skip = true;   // true: the session's SkipConfig; false: `skip` below
    SkipConfig skip;
};

enum class FinishReason { none, length, stop, eos, cancelled, context_full };
const char* finish_reason_name(FinishReason reason);

struct Stats {
    int32_t n_prompt_tokens = 0;   // tokens evaluated for the prompt (cached prefix excluded)
    int32_t n_cached_tokens = 0;   // prompt tokens reused from the previous call's KV cache
    int32_t n_generated = 0;       // tokens sampled
    double prompt_seconds = 0;
    double decode_seconds = 0;
    double prompt_tokens_per_second() const { return prompt_seconds > 0 ? n_prompt_tokens / prompt_seconds : 0; }
    double decode_tokens_per_second() const { return decode_seconds > 0 ? n_generated / decode_seconds : 0; }
    SkipStats skip;
};

struct GenerateResult {
    std::string text;
    std::vector<int32_t> prompt_tokens;
    std::vector<int32_t> tokens;   // generated ids (an EOS that ended generation is included)
    FinishReason finish_reason = FinishReason::none;
    Stats stats;
};

// Called once per generated token with the text it completes (possibly "" while a
// UTF-8 sequence or a possible stop string is pending). Return false to stop.
using TokenCallback = std::function<bool(const std::string& piece, int32_t token)>;

class Session {
  public:
    Session(std::shared_ptr<const Model> model, const SessionParams& params = {});
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    const Model& model() const;
    const char* backend() const;            // the backend in use: "cpu", "cuda"
    int32_t n_ctx() const;
    int32_t n_past() const;                 // tokens in the KV cache

    // High level: tokenize, evaluate the prompt (reusing a cached common prefix),
    // sample until a stop condition.
    GenerateResult generate(const std::string& prompt, const GenerateParams& params,
                            const TokenCallback& on_token = nullptr);

    // Pull-style generation, for callers that drive the loop (e.g. Python's stream()).
    void begin(const std::string& prompt, const GenerateParams& params);
    void begin_tokens(const std::vector<int32_t>& prompt_tokens, const GenerateParams& params);
    // One step: evaluates the previous token and samples the next. `piece` receives
    // the text this step completes (may be empty). Returns true while generation goes
    // on, false once it has finished (result().finish_reason says why); the final
    // call may still deliver text.
    bool step(std::string& piece);
    bool finished() const;
    void cancel();                          // finish with FinishReason::cancelled
    const GenerateResult& result() const;   // of the current / last generation

    // Low level: append tokens to the KV cache; returns the logits of the last one
    // (n_vocab floats, valid until the next call). all_logits receives every
    // position's logits when non-null (n_tokens x n_vocab). A single token takes the
    // decode step's path (on the GPU: the captured graph), as generation does.
    const float* eval(const std::vector<int32_t>& tokens, std::vector<float>* all_logits = nullptr);
    const std::vector<float>& last_logits() const;
    void reset();                           // empty the KV cache

    // Teacher-forced scoring with the skip policy active exactly as in generation:
    // `prompt` is processed as a prompt, then each token of `continuation` is predicted
    // and fed as decode step 0, 1, ... Starts from an empty cache. Returns the sum of
    // -log p(continuation[i] | everything before) and fills `stats`.
    double score_continuation(const std::vector<int32_t>& prompt, const std::vector<int32_t>& continuation,
                              const SkipConfig& skip, SkipStats* stats = nullptr);

    const SkipConfig& skip_config() const;
    void set_skip_config(const SkipConfig& skip);

    // Calibration: evaluates `tokens` from an empty cache as one prompt with the
    // position-independent part of `skip` (a `layers` set, surrogates) and records, per
    // layer, the residual before the FFN (h), the FFN's input (u = ffn_norm(h)) and
    // what the block added to the residual (f: the FFN's output, the surrogate's, or
    // zeros where it was left out). CPU backend.
    struct FfnTrace {
        int32_t n_layer = 0, n_tokens = 0, n_embd = 0;
        std::vector<float> h, u, f;   // (n_layer, n_tokens, n_embd) each
    };
    FfnTrace trace_ffn(const std::vector<int32_t>& tokens, const SkipConfig& skip);

    struct Impl;
  private:
    std::unique_ptr<Impl> impl_;
};

// Build facts: "cpu", and "cuda" when the CUDA backend was compiled in.
std::vector<std::string> available_backends();
std::string build_info();   // compiler, SIMD paths compiled in and chosen at run time
const char* version();

// ---- batched decoding -------------------------------------------------------------
// Several independent sequences decoded together: each step evaluates one token of
// every sequence named in it in ONE forward pass (each weight read once for all of
// them); each sequence has its own KV cache slot of n_ctx rows and its own position.
// Sequences join (their prompt is evaluated in that slot alone, in chunks of n_batch)
// and leave between steps. A sequence's logits equal those of the same tokens decoded
// alone by a Session. Each sequence has its own skip schedule (its own warm-up,
// refresh and cosine gate on its own residual) and its own FFN surrogates
// (SkipConfig::surrogates; sequences naming the same sidecar share it): an FFN's
// product runs for the rows that need it, each surrogate for the left-out rows that
// have it, and the FFN's weights are not read in a step where no row runs it.
// BatchParams::skip_alignment = "vote" trades that per-sequence equality for fewer
// weight reads (see there). Policies that leave whole layers out (shortgpt,
// skipdecode) are not supported. CPU and CUDA backends (on the GPU a row's logits
// equal a lone Session's within rounding: the batch multiplies F16 activations with
// cuBLAS where a lone decode step uses its own kernels; no surrogates in GPU batches yet).
struct BatchParams {
    int32_t n_seq = 4;          // sequence slots (the most sequences decoded together)
    int32_t n_ctx = 0;          // KV cache rows per slot; 0 = min(n_ctx_train, 4096)
    int32_t n_threads = 0;      // decode threads; 0 = all cores
    int32_t n_threads_batch = 0;  // prompt-processing threads; 0 = n_threads
    int32_t n_batch = 512;      // prompt tokens per forward pass
    int32_t n_prefill_chunk = 64;  // BatchGenerator: prompt tokens evaluated per round while
                                   // other sequences are decoding (bounds their step latency)
    std::string backend = "cpu";  // "cpu", "cuda" or "auto" (the GPU when usable)
    // How the sequences' FFN skip decisions combine in a decode step:
    //   "none": each row follows its own schedule (a sequence equals a lone Session,
    //           bit for bit); an FFN's weights are read unless every row skips it.
    //   "vote": per step and layer, the majority of the rows' decisions applies to all
    //           rows (a tie runs the FFN): a skipped FFN's weights are not read at all.
    //           A sequence's output then depends on its batch; its stats (masks,
    //           ffn_skipped, surrogates_run) count what ran for it.
    // Anything else: std::invalid_argument.
    std::string skip_alignment = "none";
};

// What a BatchSession's decode steps read (prompts excluded).
struct BatchStats {
    int64_t n_steps = 0;
    uint64_t ffn_bytes = 0;             // FFN weight bytes (gate, up, down) of every layer, per step
    uint64_t ffn_bytes_read = 0;        // of those, read: a layer's FFN in a step some row ran it
    uint64_t surrogate_bytes_read = 0;  // surrogate weights read (once per surrogate and step)
    double ffn_read_saved() const { return ffn_bytes ? 1.0 - (double)ffn_bytes_read / ffn_bytes : 0.0; }
};

class BatchSession {
  public:
    BatchSession(std::shared_ptr<const Model> model, const BatchParams& params = {});
    ~BatchSession();
    BatchSession(const BatchSession&) = delete;
    BatchSession& operator=(const BatchSession&) = delete;

    const Model& model() const;
    int32_t n_seq() const;                  // slots
    int32_t n_ctx() const;                  // per slot
    int32_t n_active() const;               // sequences in the batch now

    // Takes a free slot and evaluates the prompt in it; returns the new sequence's id
    // (ids are never reused). Its last-token logits are then last_logits(id).
    // `skip` is the sequence's policy, applied as a Session's generation applies it
    // (the prompt is its "begin", each step a generated token's decode step).
    // Throws std::invalid_argument when every slot is taken, the prompt is empty, too
    // long for a slot or has an out-of-range token, or `skip` is invalid or a
    // whole-layer policy; FileNotFoundError / FormatError for a surrogate sidecar
    // (skip.surrogates) that is missing or does not fit the model.
    int32_t add_sequence(const std::vector<int32_t>& prompt, const SkipConfig& skip = {});
    // The same in two parts, so that a long prompt does not hold up the others' steps:
    // join_sequence takes the slot and checks the arguments (no evaluation); prefill
    // evaluates up to max_tokens more of its prompt and returns how many are left
    // (n_pending). A sequence steps, and has last_logits, once nothing is pending.
    int32_t join_sequence(const std::vector<int32_t>& prompt, const SkipConfig& skip = {});
    int32_t prefill(int32_t seq, int32_t max_tokens);
    int32_t n_pending(int32_t seq) const;
    void remove_sequence(int32_t seq);      // frees its slot; unknown id: invalid_argument
    bool has_sequence(int32_t seq) const;
    std::vector<int32_t> sequences() const; // ids of the active sequences, oldest first
    int32_t n_past(int32_t seq) const;      // tokens in the sequence's cache

    // One decode step: appends token i to sequence seq_i for each (seq_i, token_i)
    // (each sequence at most once) in one forward pass. Returns the logits, row i for
    // pair i: (pairs.size(), n_vocab) row-major, valid until the next call.
    const std::vector<float>& step(const std::vector<std::pair<int32_t, int32_t>>& pairs);
    const std::vector<float>& last_logits(int32_t seq) const;   // (n_vocab)
    const SkipStats& skip_stats(int32_t seq) const;             // its decode steps so far
    const std::string& skip_alignment() const;                  // BatchParams::skip_alignment
    const BatchStats& stats() const;                            // all decode steps so far

    struct Impl;
  private:
    std::unique_ptr<Impl> impl_;
};

// ---- batched generation (continuous batching) ------------------------------------
// Generations over a BatchSession, for servers: a request joins with its own
// GenerateParams (sampling, stop strings, max_tokens, skip policy) and leaves when it
// finishes. Each step() is one round: up to n_prefill_chunk prompt tokens of joining
// requests (all of them when nothing is decoding; a request whose prompt completes
// samples its first token), then ONE forward pass that appends the last sampled token
// of every other generating request, then a sample for each: one token per request
// and round. A
// request's tokens equal those of the same request run alone by a Session (same seed),
// whatever it is batched with. One thread drives a BatchGenerator.
class BatchGenerator {
  public:
    BatchGenerator(std::shared_ptr<const Model> model, const BatchParams& params = {});
    ~BatchGenerator();
    BatchGenerator(const BatchGenerator&) = delete;
    BatchGenerator& operator=(const BatchGenerator&) = delete;

    const Model& model() const;
    int32_t n_seq() const;                  // the most requests generating together
    int32_t n_ctx() const;                  // KV cache rows of each request
    int32_t n_active() const;               // requests joined and not finished

    // The skip policy of requests whose params.use_session_skip is true.
    const SkipConfig& skip_config() const;
    void set_skip_config(const SkipConfig& skip);   // validates

    // Adds a request (its prompt is evaluated by the next step() calls); returns its id.
    // Throws std::invalid_argument when every slot is taken or an argument is bad
    // (empty or too long prompt, token out of range, bad sampling or skip settings).
    int32_t submit(const std::vector<int32_t>& prompt, const GenerateParams& params);

    struct Update {
        int32_t id;
        std::string piece;   // text this round released (whole UTF-8 characters; may be "")
        bool finished;       // its result is ready: take_result(id)
    };
    // One round; returns what each request that sampled a token this round produced
    // (valid until the next call). Nothing to do: returns an empty list at once.
    const std::vector<Update>& step();

    // Finishes a request now as cancelled (its slot is free at once); its result keeps
    // only text already delivered. Unknown or finished ids are ignored.
    void cancel(int32_t id);
    // The result of a finished request, once; then the id is forgotten.
    // Throws std::invalid_argument for an id that is unknown or still running.
    GenerateResult take_result(int32_t id);

    struct Impl;
  private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace ffnskip
