// libFuzzer target for the GGUF reader and the model loader.
//
// Every input is parsed as an in-memory GGUF image; the only exception allowed out of
// the reader is ffnskip::FormatError. An image that parses is then read back through
// every accessor, and, when it names an architecture, written to an anonymous
// in-memory file and loaded as a Model, where FormatError and std::invalid_argument
// are the allowed failures. Anything else (another exception, a sanitizer report,
// a timeout) is a bug. See tests/fuzz/README.md for how to build and run it.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ffnskip/ffnskip.h>

#include "gguf/gguf.h"

namespace {

// Reads every value, so a broken invariant in the parsed structures shows up here.
void touch_everything(const ffnskip::GgufFile& f) {
    size_t sum = 0;
    for (const auto& kv : f.metadata()) {
        sum += kv.second.to_string().size();
        if (f.find(kv.first) != &kv.second) std::abort();
        try {
            sum += f.get_string_array(kv.first).size();
            sum += f.get_float_array(kv.first).size();
            sum += f.get_int_array(kv.first).size();
            sum += (size_t)f.get_int(kv.first, 0);
            sum += (size_t)f.get_float(kv.first, 0.0);
            sum += f.get_string(kv.first, "").size();
            sum += f.get_bool(kv.first, false);
        } catch (const ffnskip::FormatError&) {
            // a value of another type than the getter asks for
        }
    }
    for (const ffnskip::GgufTensor& t : f.tensors()) {
        if (f.tensor(t.name) != &t) std::abort();
        if (t.offset % f.alignment() != 0) std::abort();
        if (f.data_offset() + t.offset + t.n_bytes > f.file_size()) std::abort();
        // the first and last byte of the data must be readable (ASan checks it)
        if (t.n_bytes > 0) sum += t.data[0] + t.data[t.n_bytes - 1];
        sum += (size_t)t.n_elements() + (size_t)t.n_rows();
    }
    volatile size_t sink = sum;
    (void)sink;
}

// The model loader takes a path: hand it an anonymous in-memory file.
void try_load_model(const uint8_t* data, size_t size) {
    int fd = memfd_create("fuzz-model", 0);
    if (fd < 0) return;
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) break;
        done += (size_t)n;
    }
    if (done == size) {
        try {
            auto model = ffnskip::Model::load("/proc/self/fd/" + std::to_string(fd));
            (void)model->tensors();
            (void)model->metadata();
        } catch (const ffnskip::FormatError&) {
        } catch (const std::invalid_argument&) {
        }
    }
    close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    bool parsed = false;
    bool has_arch = false;
    try {
        ffnskip::GgufFile f(data, size, "<fuzz>");
        touch_everything(f);
        parsed = true;
        has_arch = f.has("general.architecture");
    } catch (const ffnskip::FormatError&) {
        return 0;
    }
    // Model loading maps the file; skip the empty image (mapping 0 bytes fails early anyway).
    if (parsed && has_arch && size > 0) try_load_model(data, size);
    return 0;
}
