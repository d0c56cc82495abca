// A minimal test harness: TEST(name) registers a function, CHECK(cond, message)
// records a failure with file:line and lets the test go on, CHECK_THROWS(expr, Type,
// substring) checks that expr throws Type with a message containing substring.
#pragma once

#include <cstdio>
#include <string>

namespace ffnskip_test {

using TestFn = void (*)();
void register_test(const char* name, TestFn fn);
void record_failure(const char* file, int line, const std::string& what);

struct Registrar {
    Registrar(const char* name, TestFn fn) { register_test(name, fn); }
};

}  // namespace ffnskip_test

#define TEST(name)                                                          \
    static void test_##name();                                              \
    static ffnskip_test::Registrar registrar_##name(#name, &test_##name);  \
    static void test_##name()

#define CHECK(cond, message)                                                                     \
    do {                                                                                         \
        if (!(cond)) ffnskip_test::record_failure(__FILE__, __LINE__, std::string(#cond) + ": " + (message)); \
    } while (0)

#define CHECK_THROWS(expr, Type, substring)                                                             \
    do {                                                                                                \
        bool thrown_ = false;                                                                           \
        try {                                                                                           \
            (void)(expr);                                                                               \
        } catch (const Type& e_) {                                                                      \
            thrown_ = true;                                                                             \
            std::string msg_ = e_.what();                                                               \
            if (msg_.find(substring) == std::string::npos)                                              \
                ffnskip_test::record_failure(__FILE__, __LINE__, "message '" + msg_ + "' lacks '" + (substring) + "'"); \
        } catch (const std::exception& e_) {                                                            \
            thrown_ = true;                                                                             \
            ffnskip_test::record_failure(__FILE__, __LINE__, std::string(#expr) + " threw another type: " + e_.what()); \
        }                                                                                               \
        if (!thrown_) ffnskip_test::record_failure(__FILE__, __LINE__, std::string(#expr) + " did not throw " #Type); \
    } while (0)
