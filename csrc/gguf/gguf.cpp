// GGUF reader. Layout (little-endian):
//   header   : magic "GGUF", u32 version (2 or 3), u64 n_tensors, u64 n_kv
//   metadata : n_kv x { string key, u32 value_type, value }
//   tensors  : n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
//   padding to general.alignment, then the data section (tensor offsets are relative to it)
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
// Every count and length is checked against the bytes that remain before it is used.
#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <sstream>

#include <ffnskip/ffnskip.h>

namespace ffnskip {

namespace {

constexpr int kMaxArrayDepth = 8;
constexpr int kMaxDims = 4;

size_t scalar_size(GgufValueType t) {
    switch (t) {
        case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
        case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
        case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
        case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64: return 8;
        case GgufValueType::STRING: return 8;   // at least the length field
        case GgufValueType::ARRAY: return 12;   // at least type + count
    }
    return 0;
}

// Keys and tensor names are identifiers: they must be valid UTF-8 (the format says so,
// and Python turns them into str). Values may hold any bytes.
bool utf8_valid(const std::string& s) {
    size_t i = 0, n = s.size();
    while (i < n) {
        const uint8_t c = (uint8_t)s[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (len == 0 || i + len > n) return false;
        uint32_t cp = len == 1 ? c : c & (0x7F >> len);
        for (int k = 1; k < len; k++) {
            const uint8_t cc = (uint8_t)s[i + k];
            if ((cc >> 6) != 0x2) return false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        // overlong forms, surrogates, beyond U+10FFFF
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return false;
        i += len;
    }
    return true;
}

bool value_type_known(uint32_t t) { return t <= (uint32_t)GgufValueType::FLOAT64; }

// Bounds-checked cursor over the file image.
class Cursor {
  public:
    Cursor(const uint8_t* base, uint64_t size, const std::string& path)
        : base_(base), size_(size), path_(path) {}

    uint64_t pos() const { return pos_; }
    uint64_t remaining() const { return size_ - pos_; }

    [[noreturn]] void fail(const std::string& what) const { fail_at(pos_, what); }
    [[noreturn]] void fail_at(uint64_t at, const std::string& what) const {
        std::ostringstream os;
        os << path_ << ": invalid GGUF: " << what << " (at byte " << at << " of " << size_ << ")";
        throw FormatError(os.str());
    }

    void need(uint64_t n, const char* what) const {
        if (n > remaining()) {
            std::ostringstream os;
            os << "file truncated while reading " << what << ": needs " << n << " bytes, "
               << remaining() << " left";
            fail(os.str());
        }
    }
    template <typename T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string read_string(const char* what) {
        uint64_t start = pos_;
        uint64_t len = read<uint64_t>(what);
        if (len > remaining()) {
            std::ostringstream os;
            os << what << " has length " << len << " but only " << remaining() << " bytes remain";
            fail_at(start, os.str());
        }
        std::string s(reinterpret_cast<const char*>(base_ + pos_), (size_t)len);
        pos_ += len;
        return s;
    }

  private:
    const uint8_t* base_;
    uint64_t size_;
    uint64_t pos_ = 0;
    const std::string& path_;
};

void read_value(Cursor& c, GgufValueType type, GgufValue& v, const std::string& key, int depth);

void read_scalar(Cursor& c, GgufValueType type, GgufValue& v, const std::string& key) {
    v.type = type;
    switch (type) {
        case GgufValueType::UINT8: v.u64 = c.read<uint8_t>("u8 value"); v.i64 = (int64_t)v.u64; break;
        case GgufValueType::INT8: v.i64 = c.read<int8_t>("i8 value"); break;
        case GgufValueType::UINT16: v.u64 = c.read<uint16_t>("u16 value"); v.i64 = (int64_t)v.u64; break;
        case GgufValueType::INT16: v.i64 = c.read<int16_t>("i16 value"); break;
        case GgufValueType::UINT32: v.u64 = c.read<uint32_t>("u32 value"); v.i64 = (int64_t)v.u64; break;
        case GgufValueType::INT32: v.i64 = c.read<int32_t>("i32 value"); break;
        case GgufValueType::FLOAT32: v.f64 = c.read<float>("f32 value"); break;
        case GgufValueType::BOOL: {
            uint8_t b = c.read<uint8_t>("bool value");
            if (b > 1) c.fail("metadata '" + key + "': bool value " + std::to_string(b) + " is not 0 or 1");
            v.u64 = b;
            v.i64 = b;
            break;
        }
        case GgufValueType::STRING: v.str = c.read_string("string value"); break;
        case GgufValueType::UINT64:
            v.u64 = c.read<uint64_t>("u64 value");
            v.i64 = v.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v.u64;
            break;
        case GgufValueType::INT64: v.i64 = c.read<int64_t>("i64 value"); break;
        case GgufValueType::FLOAT64: v.f64 = c.read<double>("f64 value"); break;
        case GgufValueType::ARRAY: break;  // handled by read_value
    }
}

void read_value(Cursor& c, GgufValueType type, GgufValue& v, const std::string& key, int depth) {
    if (type != GgufValueType::ARRAY) {
        read_scalar(c, type, v, key);
        return;
    }
    if (depth >= kMaxArrayDepth) c.fail("metadata '" + key + "': arrays nested deeper than " + std::to_string(kMaxArrayDepth));
    v.type = GgufValueType::ARRAY;
    uint64_t at = c.pos();
    uint32_t elem = c.read<uint32_t>("array element type");
    if (!value_type_known(elem))
        c.fail_at(at, "metadata '" + key + "': unknown array element type " + std::to_string(elem));
    v.array_type = (GgufValueType)elem;
    uint64_t count = c.read<uint64_t>("array length");
    uint64_t min_bytes = scalar_size(v.array_type);
    if (count > c.remaining() / min_bytes) {
        std::ostringstream os;
        os << "metadata '" << key << "': array of " << count << " " << gguf_value_type_name(v.array_type)
           << " cannot fit in the " << c.remaining() << " bytes that remain";
        c.fail_at(at, os.str());
    }
    v.array.resize((size_t)count);
    for (uint64_t i = 0; i < count; i++) read_value(c, v.array_type, v.array[i], key, depth + 1);
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
    if (a != 0 && b > UINT64_MAX / a) return true;
    *out = a * b;
    return false;
}

}  // namespace

const char* gguf_value_type_name(GgufValueType type) {
    switch (type) {
        case GgufValueType::UINT8: return "u8";
        case GgufValueType::INT8: return "i8";
        case GgufValueType::UINT16: return "u16";
        case GgufValueType::INT16: return "i16";
        case GgufValueType::UINT32: return "u32";
        case GgufValueType::INT32: return "i32";
        case GgufValueType::FLOAT32: return "f32";
        case GgufValueType::BOOL: return "bool";
        case GgufValueType::STRING: return "string";
        case GgufValueType::ARRAY: return "array";
        case GgufValueType::UINT64: return "u64";
        case GgufValueType::INT64: return "i64";
        case GgufValueType::FLOAT64: return "f64";
    }
    return "unknown";
}

// ---- GgufValue --------------------------------------------------------------------

bool GgufValue::is_integer() const {
    switch (type) {
        case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16:
        case GgufValueType::INT16: case GgufValueType::UINT32: case GgufValueType::INT32:
        case GgufValueType::UINT64: case GgufValueType::INT64: return true;
        default: return false;
    }
}

bool GgufValue::is_number() const {
    return is_integer() || type == GgufValueType::BOOL || type == GgufValueType::FLOAT32 ||
           type == GgufValueType::FLOAT64;
}

int64_t GgufValue::as_int() const {
    if (!is_integer() && type != GgufValueType::BOOL)
        throw FormatError(std::string("expected an integer, found ") + gguf_value_type_name(type));
    return i64;
}

double GgufValue::as_double() const {
    if (type == GgufValueType::FLOAT32 || type == GgufValueType::FLOAT64) return f64;
    if (type == GgufValueType::UINT64) return (double)u64;
    return (double)as_int();
}

std::string GgufValue::to_string(size_t max_items) const {
    std::ostringstream os;
    switch (type) {
        case GgufValueType::STRING: {
            std::string s = str.size() > 120 ? str.substr(0, 117) + "..." : str;
            os << '"';
            for (char ch : s) {
                if (ch == '\n') os << "\\n";
                else if (ch == '"') os << "\\\"";
                else os << ch;
            }
            os << '"';
            break;
        }
        case GgufValueType::ARRAY: {
            os << "[";
            for (size_t i = 0; i < array.size() && i < max_items; i++) os << (i ? ", " : "") << array[i].to_string(max_items);
            if (array.size() > max_items) os << ", ... (" << array.size() << " " << gguf_value_type_name(array_type) << ")";
            os << "]";
            break;
        }
        case GgufValueType::FLOAT32: case GgufValueType::FLOAT64: os << f64; break;
        case GgufValueType::BOOL: os << (u64 ? "true" : "false"); break;
        case GgufValueType::UINT64: os << u64; break;
        default: os << i64; break;
    }
    return os.str();
}

// ---- GgufTensor -------------------------------------------------------------------

int64_t GgufTensor::n_elements() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    return n;
}

int64_t GgufTensor::n_rows() const {
    int64_t n = 1;
    for (size_t i = 1; i < ne.size(); i++) n *= ne[i];
    return n;
}

// ---- GgufFile ---------------------------------------------------------------------

GgufFile::GgufFile(const std::string& path) : path_(path) {
    // open() would stop at the NUL and read another file than the one named.
    if (path.find('\0') != std::string::npos) throw std::invalid_argument("model path contains a NUL byte");
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR) throw FileNotFoundError(path + ": no such file");
        throw Error(path + ": cannot open: " + std::strerror(err));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        bool dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
        ::close(fd);
        throw Error(path + (dir ? ": is a directory, not a regular file" : ": not a regular file"));
    }
    size_ = (uint64_t)st.st_size;
    if (size_ == 0) {
        ::close(fd);
        throw FormatError(path + ": invalid GGUF: the file is empty");
    }
    void* p = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw Error(path + ": mmap failed: " + std::strerror(errno));
    base_ = static_cast<const uint8_t*>(p);
    mapped_ = true;
    try {
        parse();
    } catch (...) {
        munmap(const_cast<uint8_t*>(base_), size_);
        throw;
    }
}

GgufFile::GgufFile(const uint8_t* data, size_t size, const std::string& name)
    : path_(name), base_(data), size_(size) {
    parse();
}

GgufFile::~GgufFile() {
    if (mapped_) munmap(const_cast<uint8_t*>(base_), size_);
}

void GgufFile::parse() {
    Cursor c(base_, size_, path_);
    if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0) {
        c.fail("wrong magic: not a GGUF file (expected the bytes 'GGUF' at the start)");
    }
    c.read<uint32_t>("magic");
    uint64_t at = c.pos();
    version_ = c.read<uint32_t>("version");
    if (version_ == 1) c.fail_at(at, "GGUF version 1 is not supported (versions 2 and 3 are)");
    if ((version_ & 0xFFFF) == 0 && version_ != 0) c.fail_at(at, "big-endian GGUF files are not supported");
    if (version_ != 2 && version_ != 3)
        c.fail_at(at, "unsupported GGUF version " + std::to_string(version_) + " (versions 2 and 3 are supported)");

    at = c.pos();
    uint64_t n_tensors = c.read<uint64_t>("tensor count");
    uint64_t n_kv = c.read<uint64_t>("metadata count");
    // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor
    // entry at least 8 + 4 + 8 + 4 + 8; reject counts the file cannot possibly hold.
    if (n_kv > c.remaining() / 13)
        c.fail_at(at, "metadata count " + std::to_string(n_kv) + " is larger than the file can hold");
    if (n_tensors > c.remaining() / 32)
        c.fail_at(at, "tensor count " + std::to_string(n_tensors) + " is larger than the file can hold");

    kv_.reserve((size_t)n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        uint64_t kat = c.pos();
        std::string key = c.read_string("metadata key");
        if (key.empty()) c.fail_at(kat, "metadata entry " + std::to_string(i) + " has an empty key");
        if (!utf8_valid(key)) c.fail_at(kat, "metadata entry " + std::to_string(i) + " has a key that is not valid UTF-8");
        if (kv_index_.count(key)) c.fail_at(kat, "duplicate metadata key '" + key + "'");
        uint64_t tat = c.pos();
        uint32_t type = c.read<uint32_t>("metadata value type");
        if (!value_type_known(type))
            c.fail_at(tat, "metadata '" + key + "' has unknown value type " + std::to_string(type));
        GgufValue v;
        read_value(c, (GgufValueType)type, v, key, 0);
        kv_index_[key] = kv_.size();
        kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const GgufValue* a = find("general.alignment")) {
        if (!a->is_integer() || a->i64 <= 0 || (a->i64 & (a->i64 - 1)) != 0 || a->i64 > (1 << 30))
            c.fail("general.alignment must be a positive power of two, found " + a->to_string());
        alignment_ = (uint64_t)a->i64;
    }

    tensors_.reserve((size_t)n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++) {
        GgufTensor t;
        uint64_t tat = c.pos();
        t.name = c.read_string("tensor name");
        if (t.name.empty()) c.fail_at(tat, "tensor " + std::to_string(i) + " has an empty name");
        if (!utf8_valid(t.name)) c.fail_at(tat, "tensor " + std::to_string(i) + " has a name that is not valid UTF-8");
        if (tensor_index_.count(t.name)) c.fail_at(tat, "duplicate tensor name '" + t.name + "'");
        uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
        if (n_dims == 0 || n_dims > kMaxDims)
            c.fail_at(tat, "tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
        uint64_t n_el = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            uint64_t dim = c.read<uint64_t>("tensor dimension");
            if (dim == 0 || dim > (uint64_t)INT64_MAX)
                c.fail_at(tat, "tensor '" + t.name + "' has invalid dimension " + std::to_string(dim));
            if (mul_overflows(n_el, dim, &n_el) || n_el > (uint64_t)INT64_MAX)
                c.fail_at(tat, "tensor '" + t.name + "': element count overflows");
            t.ne.push_back((int64_t)dim);
        }
        uint32_t type = c.read<uint32_t>("tensor type");
        if (!type_is_supported(type))
            c.fail_at(tat, "tensor '" + t.name + "' has type " + type_name(type) + " (" + std::to_string(type) +
                               "), which ffnskip does not support");
        t.type = (GgmlType)type;
        const TypeTraits& tr = type_traits(t.type);
        if (t.ne[0] % tr.block_size != 0)
            c.fail_at(tat, "tensor '" + t.name + "': row length " + std::to_string(t.ne[0]) +
                               " is not a multiple of the " + tr.name + " block size " + std::to_string(tr.block_size));
        uint64_t row_bytes = 0;
        if (mul_overflows((uint64_t)(t.ne[0] / tr.block_size), tr.type_size, &row_bytes) ||
            mul_overflows(row_bytes, (uint64_t)t.n_rows(), &t.n_bytes))
            c.fail_at(tat, "tensor '" + t.name + "': byte size overflows");
        t.offset = c.read<uint64_t>("tensor offset");
        if (t.offset % alignment_ != 0)
            c.fail_at(tat, "tensor '" + t.name + "': offset " + std::to_string(t.offset) +
                               " is not a multiple of the alignment " + std::to_string(alignment_));
        tensor_index_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }

    uint64_t header_end = c.pos();
    data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
    if (n_tensors > 0 && data_offset_ > size_)
        c.fail("file truncated: the data section would start at byte " + std::to_string(data_offset_));
    uint64_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;
    for (GgufTensor& t : tensors_) {
        if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
            std::ostringstream os;
            os << "tensor '" << t.name << "' (" << type_name((uint32_t)t.type) << ", " << t.n_bytes
               << " bytes at data offset " << t.offset << ") lies outside the data section of "
               << data_size << " bytes (file truncated?)";
            c.fail_at(data_offset_ + std::min(t.offset, data_size), os.str());
        }
        t.data = base_ + data_offset_ + t.offset;
    }
}

const GgufValue* GgufFile::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor* GgufFile::tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const char* want, const GgufValue& v) {
    throw FormatError(path + ": metadata '" + key + "' should be " + want + ", found " + gguf_value_type_name(v.type));
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) throw FormatError(path_ + ": required metadata '" + key + "' is missing");
    if (v->type != GgufValueType::STRING) wrong_type(path_, key, "a string", *v);
    return v->str;
}

std::string GgufFile::get_string(const std::string& key, const std::string& def) const {
    return has(key) ? get_string(key) : def;
}

int64_t GgufFile::get_int(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) throw FormatError(path_ + ": required metadata '" + key + "' is missing");
    if (!v->is_integer()) wrong_type(path_, key, "an integer", *v);
    if (v->type == GgufValueType::UINT64 && v->u64 > (uint64_t)INT64_MAX)
        throw FormatError(path_ + ": metadata '" + key + "' is out of range");
    return v->i64;
}

int64_t GgufFile::get_int(const std::string& key, int64_t def) const { return has(key) ? get_int(key) : def; }

double GgufFile::get_float(const std::string& key, double def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    if (!v->is_number() || v->type == GgufValueType::BOOL) wrong_type(path_, key, "a number", *v);
    return v->as_double();
}

bool GgufFile::get_bool(const std::string& key, bool def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    if (v->type != GgufValueType::BOOL) wrong_type(path_, key, "a bool", *v);
    return v->u64 != 0;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
    std::vector<std::string> out;
    const GgufValue* v = find(key);
    if (!v) return out;
    if (v->type != GgufValueType::ARRAY || v->array_type != GgufValueType::STRING)
        wrong_type(path_, key, "an array of strings", *v);
    out.reserve(v->array.size());
    for (const GgufValue& e : v->array) out.push_back(e.str);
    return out;
}

std::vector<float> GgufFile::get_float_array(const std::string& key) const {
    std::vector<float> out;
    const GgufValue* v = find(key);
    if (!v) return out;
    if (v->type != GgufValueType::ARRAY || !(v->array_type == GgufValueType::FLOAT32 || v->array_type == GgufValueType::FLOAT64))
        wrong_type(path_, key, "an array of floats", *v);
    out.reserve(v->array.size());
    for (const GgufValue& e : v->array) {
        // a double beyond the float range has no float value (the cast is undefined)
        if (std::isfinite(e.f64) && std::fabs(e.f64) > FLT_MAX)
            throw FormatError(path_ + ": metadata '" + key + "' holds a value out of the float range");
        out.push_back((float)e.f64);
    }
    return out;
}

std::vector<int32_t> GgufFile::get_int_array(const std::string& key) const {
    std::vector<int32_t> out;
    const GgufValue* v = find(key);
    if (!v) return out;
    if (v->type != GgufValueType::ARRAY) wrong_type(path_, key, "an array of integers", *v);
    out.reserve(v->array.size());
    for (const GgufValue& e : v->array) {
        if (!e.is_integer()) wrong_type(path_, key, "an array of integers", *v);
        if (e.i64 < INT32_MIN || e.i64 > INT32_MAX) throw FormatError(path_ + ": metadata '" + key + "' holds a value out of the int32 range");
        out.push_back((int32_t)e.i64);
    }
    return out;
}

}  // namespace ffnskip
