// GGUF reader: images assembled byte by byte, parsed from memory.
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <ffnskip/ffnskip.h>

#include "check.h"
#include "gguf/gguf.h"

using ffnskip::FormatError;
using ffnskip::GgufFile;
using ffnskip::GgufValueType;

namespace {

// Little-endian byte writer for GGUF images.
struct Bytes {
    std::vector<uint8_t> b;
    Bytes& raw(const void* p, size_t n) {
        const uint8_t* q = static_cast<const uint8_t*>(p);
        b.insert(b.end(), q, q + n);
        return *this;
    }
    Bytes& u32(uint32_t v) { return raw(&v, 4); }
    Bytes& u64(uint64_t v) { return raw(&v, 8); }
    Bytes& f32(float v) { return raw(&v, 4); }
    Bytes& str(const std::string& s) { return u64(s.size()).raw(s.data(), s.size()); }
    Bytes& pad(size_t alignment) {
        while (b.size() % alignment) b.push_back(0);
        return *this;
    }
};

// header + kv entries + tensor entries, padded, + data
std::vector<uint8_t> make_image(uint64_t n_tensors, uint64_t n_kv, const Bytes& kvs, const Bytes& tensors,
                                const Bytes& data, uint32_t version = 3) {
    Bytes out;
    out.raw("GGUF", 4).u32(version).u64(n_tensors).u64(n_kv);
    out.raw(kvs.b.data(), kvs.b.size()).raw(tensors.b.data(), tensors.b.size()).pad(32);
    out.raw(data.b.data(), data.b.size());
    return out.b;
}

std::vector<uint8_t> valid_image() {
    Bytes kvs, tensors, data;
    kvs.str("general.architecture").u32(8).str("llama");
    kvs.str("llama.block_count").u32(4).u32(2);
    kvs.str("weights").u32(9).u32(6).u64(3).f32(0.5f).f32(-1.0f).f32(2.0f);
    kvs.str("names").u32(9).u32(8).u64(2).str("ab").str("");
    tensors.str("w").u32(2).u64(4).u64(2).u32(0).u64(0);      // F32 [4, 2] at 0
    tensors.str("v").u32(1).u64(8).u32(0).u64(32);            // F32 [8] at 32
    for (int i = 0; i < 8; i++) data.f32((float)i);
    for (int i = 0; i < 8; i++) data.f32((float)-i);
    return make_image(2, 4, kvs, tensors, data);
}

GgufFile parse(const std::vector<uint8_t>& img) { return GgufFile(img.data(), img.size()); }

}  // namespace

TEST(gguf_valid_image) {
    std::vector<uint8_t> img = valid_image();
    GgufFile f(img.data(), img.size());
    CHECK(f.version() == 3, "version");
    CHECK(f.get_string("general.architecture") == "llama", "architecture");
    CHECK(f.get_int("llama.block_count") == 2, "block_count");
    std::vector<float> w = f.get_float_array("weights");
    CHECK(w.size() == 3 && w[0] == 0.5f && w[1] == -1.0f && w[2] == 2.0f, "float array");
    std::vector<std::string> names = f.get_string_array("names");
    CHECK(names.size() == 2 && names[0] == "ab" && names[1].empty(), "string array");
    CHECK(f.data_offset() % 32 == 0 && f.data_offset() + 64 == img.size(), "data offset");
    const ffnskip::GgufTensor* t = f.tensor("v");
    CHECK(t && t->n_bytes == 32 && t->offset == 32, "tensor v");
    float x;
    std::memcpy(&x, t->data + 4, 4);
    CHECK(x == -1.0f, "tensor data points into the image");
    CHECK(f.tensor("nope") == nullptr, "absent tensor");
    CHECK_THROWS(f.get_int("general.architecture"), FormatError, "should be an integer");
    CHECK_THROWS(f.get_string("missing.key"), FormatError, "required metadata 'missing.key' is missing");
    CHECK(f.get_int("missing.key", 7) == 7, "default");
}

TEST(gguf_every_prefix_is_refused) {
    std::vector<uint8_t> img = valid_image();
    for (size_t n = 0; n < img.size(); n++) {
        std::vector<uint8_t> cut(img.begin(), img.begin() + n);
        CHECK_THROWS(GgufFile(cut.data(), cut.size()), FormatError, "invalid GGUF");
    }
}

TEST(gguf_header_errors) {
    std::vector<uint8_t> img = valid_image();
    std::vector<uint8_t> bad = img;
    bad[0] = 'X';
    CHECK_THROWS(parse(bad), FormatError, "wrong magic");
    bad = img;
    bad[4] = 1;
    CHECK_THROWS(parse(bad), FormatError, "GGUF version 1 is not supported");
    bad = img;
    bad[4] = 9;
    CHECK_THROWS(parse(bad), FormatError, "unsupported GGUF version 9");
    bad = img;
    std::memset(&bad[16], 0xFF, 8);   // n_kv
    CHECK_THROWS(parse(bad), FormatError, "metadata count 18446744073709551615 is larger than the file can hold");
}

TEST(gguf_value_errors) {
    Bytes none;
    Bytes data;
    data.pad(1);
    {
        Bytes kvs;
        kvs.str("k").u32(13).u32(0);
        CHECK_THROWS(parse(make_image(0, 1, kvs, none, data)), FormatError, "'k' has unknown value type 13");
    }
    {
        Bytes kvs;
        kvs.str("k").u32(8).u64(1ull << 62);
        CHECK_THROWS(parse(make_image(0, 1, kvs, none, data)), FormatError, "string value has length 4611686018427387904");
    }
    {
        Bytes kvs;
        kvs.str("k").u32(9).u32(4).u64(1ull << 40);
        CHECK_THROWS(parse(make_image(0, 1, kvs, none, data)), FormatError, "cannot fit");
    }
    {
        Bytes kvs;
        kvs.str("k").u32(9);
        for (int i = 0; i < 50; i++) kvs.u32(9).u64(1);
        kvs.u32(0).u64(0);
        CHECK_THROWS(parse(make_image(0, 1, kvs, none, data)), FormatError, "nested deeper");
    }
    {
        Bytes kvs;
        kvs.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
        CHECK_THROWS(parse(make_image(0, 2, kvs, none, data)), FormatError, "duplicate metadata key 'k'");
    }
    {
        Bytes kvs;
        kvs.str("general.alignment").u32(4).u32(24);
        CHECK_THROWS(parse(make_image(0, 1, kvs, none, data)), FormatError, "power of two");
    }
    {
        Bytes kvs;   // a double beyond the float range, read as a float array
        double big = 1e300;
        kvs.str("f").u32(9).u32(12).u64(1).raw(&big, 8);
        std::vector<uint8_t> img = make_image(0, 1, kvs, none, data);
        GgufFile f(img.data(), img.size());
        CHECK_THROWS(f.get_float_array("f"), FormatError, "out of the float range");
    }
}

TEST(gguf_tensor_errors) {
    Bytes none;
    Bytes data;
    for (int i = 0; i < 64; i++) data.u32(0);
    {
        Bytes t;
        t.str("w").u32(1).u64(256).u32(16).u64(0);
        CHECK_THROWS(parse(make_image(1, 0, none, t, data)), FormatError, "type IQ2_XXS (16)");
    }
    {
        Bytes t;
        t.str("w").u32(1).u64(4).u32(0).u64(8);
        CHECK_THROWS(parse(make_image(1, 0, none, t, data)), FormatError, "offset 8 is not a multiple of the alignment 32");
    }
    {
        Bytes t;
        t.str("w").u32(1).u64(4).u32(0).u64(1 << 20);
        CHECK_THROWS(parse(make_image(1, 0, none, t, data)), FormatError, "lies outside the data section");
    }
    {
        Bytes t;
        t.str("w").u32(1).u64(1ull << 62).u32(0).u64(0);
        CHECK_THROWS(parse(make_image(1, 0, none, t, data)), FormatError, "byte size overflows");
    }
    {
        Bytes t;
        t.str("w").u32(3).u64(1ull << 32).u64(1ull << 32).u64(1ull << 32).u32(0).u64(0);
        CHECK_THROWS(parse(make_image(1, 0, none, t, data)), FormatError, "element count overflows");
    }
    {
        Bytes t;
        t.str("w").u32(1).u64(4).u32(0).u64(0).str("w").u32(1).u64(4).u32(0).u64(32);
        CHECK_THROWS(parse(make_image(2, 0, none, t, data)), FormatError, "duplicate tensor name 'w'");
    }
    {
        Bytes t;
        t.str("w").u32(5).u64(1).u64(1).u64(1).u64(1).u64(1).u32(0).u64(0);
        CHECK_THROWS(parse(make_image(1, 0, none, t, data)), FormatError, "has 5 dimensions");
    }
}
