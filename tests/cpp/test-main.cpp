// Runs every registered test; exits non-zero when any check failed.
// Usage: ffnskip_tests [substring]   (only tests whose name contains it)
#include <cstring>
#include <vector>

#include "check.h"

namespace ffnskip_test {

namespace {
struct Entry {
    const char* name;
    TestFn fn;
};
std::vector<Entry>& registry() {
    static std::vector<Entry> tests;
    return tests;
}
int g_failures = 0;
}  // namespace

void register_test(const char* name, TestFn fn) { registry().push_back({name, fn}); }

void record_failure(const char* file, int line, const std::string& what) {
    g_failures++;
    std::fprintf(stderr, "  FAIL %s:%d: %s\n", file, line, what.c_str());
}

}  // namespace ffnskip_test

int main(int argc, char** argv) {
    using namespace ffnskip_test;
    const char* filter = argc > 1 ? argv[1] : "";
    int passed = 0, failed = 0;
    for (const Entry& t : registry()) {
        if (!std::strstr(t.name, filter)) continue;
        const int before = g_failures;
        try {
            t.fn();
        } catch (const std::exception& e) {
            record_failure(t.name, 0, std::string("unexpected exception: ") + e.what());
        }
        const bool ok = g_failures == before;
        std::printf("%s %s\n", ok ? "ok  " : "FAIL", t.name);
        (ok ? passed : failed)++;
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
