// GGUF v2/v3 reader: a read-only memory map, the metadata, the tensor table.
// Everything is validated when the file is opened; a bad file throws
// ffnskip::FormatError naming the file, what is wrong and where (byte offset).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "quant/quant.h"

namespace ffnskip {

enum class GgufValueType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
    BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_value_type_name(GgufValueType type);

// One metadata value. Scalars live in the number fields; arrays (possibly nested)
// in `array`, all of element type `array_type`.
struct GgufValue {
    GgufValueType type = GgufValueType::UINT8;
    uint64_t u64 = 0;        // UINT*, BOOL
    int64_t i64 = 0;         // INT* (also set for UINT* that fit)
    double f64 = 0;          // FLOAT*
    std::string str;         // STRING
    GgufValueType array_type = GgufValueType::UINT8;
    std::vector<GgufValue> array;

    bool is_integer() const;
    bool is_number() const;  // integer, float or bool
    int64_t as_int() const;  // any integer or bool; throws FormatError otherwise
    double as_double() const;
    std::string to_string(size_t max_items = 8) const;   // for `ffnskip info`
};

struct GgufTensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;     // dimensions, innermost first (ne[0] = row length)
    uint64_t offset = 0;         // relative to the start of the data section
    const uint8_t* data = nullptr;  // into the mapping
    uint64_t n_bytes = 0;
    int64_t n_elements() const;
    int64_t n_rows() const;      // product of ne[1..]
};

class GgufFile {
  public:
    // Maps and validates `path`. Throws FileNotFoundError / FormatError.
    explicit GgufFile(const std::string& path);
    // Parses an in-memory image (not copied; must outlive the object). For tests and fuzzing.
    GgufFile(const uint8_t* data, size_t size, const std::string& name = "<memory>");
    ~GgufFile();
    GgufFile(const GgufFile&) = delete;
    GgufFile& operator=(const GgufFile&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    uint64_t file_size() const { return size_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }

    // Metadata in file order.
    const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
    const GgufValue* find(const std::string& key) const;   // nullptr when absent
    bool has(const std::string& key) const { return find(key) != nullptr; }
    // Typed getters: the `def` variants return def when the key is absent and throw
    // FormatError when it is present with the wrong type; the others throw when absent.
    std::string get_string(const std::string& key) const;
    std::string get_string(const std::string& key, const std::string& def) const;
    int64_t get_int(const std::string& key) const;
    int64_t get_int(const std::string& key, int64_t def) const;
    double get_float(const std::string& key, double def) const;
    bool get_bool(const std::string& key, bool def) const;
    // Arrays of one element type; throw FormatError on a wrong type. Absent -> empty.
    std::vector<std::string> get_string_array(const std::string& key) const;
    std::vector<float> get_float_array(const std::string& key) const;
    std::vector<int32_t> get_int_array(const std::string& key) const;

    const std::vector<GgufTensor>& tensors() const { return tensors_; }
    const GgufTensor* tensor(const std::string& name) const;   // nullptr when absent

  private:
    void parse();
    std::string path_;
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    bool mapped_ = false;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::map<std::string, size_t> kv_index_;
    std::vector<GgufTensor> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

}  // namespace ffnskip
