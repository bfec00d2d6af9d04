// waypoint/json: RapidJSON reads with nlohmann's accept/reject rules and builds the same
// nlohmann document, so swapping the parser changes no answer the waypoint gives.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "waypoint/json/parse.h"

namespace sluice::waypoint {
namespace {

using namespace std::string_literals;

// Same value and the same kind at every node (nlohmann's == calls unsigned 1 and integer 1
// equal). Without recursion: the documents nest 10k deep.
bool sameDocument(const nlohmann::json& first, const nlohmann::json& second) {
    std::vector<std::pair<const nlohmann::json*, const nlohmann::json*>> todo{{&first, &second}};
    while (!todo.empty()) {
        const auto [a, b] = todo.back();
        todo.pop_back();
        if (a->type() != b->type() || a->size() != b->size() || (!a->is_structured() && *a != *b))
            return false;
        if (a->is_number_float() &&
            std::signbit(a->get<double>()) != std::signbit(b->get<double>()))
            return false;
        if (a->is_array()) {
            for (std::size_t i = 0; i < a->size(); ++i)
                todo.emplace_back(&(*a)[i], &(*b)[i]);
        } else if (a->is_object()) {
            for (auto it = a->begin(); it != a->end(); ++it) {
                auto other = b->find(it.key());
                if (other == b->end())
                    return false;
                todo.emplace_back(&it.value(), &*other);
            }
        }
    }
    return true;
}

// What json::parse gives for `text` is what nlohmann::json::parse gives: nothing where it
// throws, else the same document.
::testing::AssertionResult parsesLikeNlohmann(const std::string& text) {
    const auto ours = json::parse(text);
    const auto theirs = nlohmann::json::parse(text, nullptr, false);
    if (ours.has_value() == theirs.is_discarded())
        return ::testing::AssertionFailure()
               << (ours ? "accepted" : "rejected")
               << " by RapidJSON, not by nlohmann: " << ::testing::PrintToString(text);
    if (ours && !sameDocument(*ours, theirs))
        return ::testing::AssertionFailure()
               << "different documents for " << ::testing::PrintToString(text) << ": "
               << ours->dump() << " vs " << theirs.dump();
    return ::testing::AssertionSuccess();
}

TEST(WaypointJson, AcceptsAndRejectsWhatNlohmannDoes) {
    const std::vector<std::string> cases = {
        // empty, whitespace and what may follow the value
        "",
        " ",
        "{}",
        "[]",
        "null",
        " [1] \n\t\r",
        "[1] x",
        "[1][2]",
        "\f[1]",
        "\v[1]",
        "[1]\f",
        "\xC2\xA0[1]",
        "[1]\0"s,
        "[1]\0 "s,
        "[1\0]"s,
        "\0"s,
        "\xEF\xBB\xBF[1]",
        "\xEF\xBB\xBF",
        "\xEF\xBB[1]",
        "[1]\xEF\xBB\xBF",
        "\xEF\xBB\xBF\xEF\xBB\xBF[1]",
        // numbers: grammar, 64-bit edges, float range and rounding
        "0",
        "-0",
        "-0.0",
        "0.0",
        "01",
        "-01",
        "1.",
        ".5",
        "+1",
        "-",
        "1e",
        "1e+",
        "1E5",
        "1e-5",
        "1.5e+3",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "9223372036854775808",
        "123456789012345678901234567890",
        "1e308",
        "1e309",
        "1e400",
        "-1e400",
        "1.8e308",
        "1.7976931348623157e308",
        "1.7976931348623158e308",
        "1.7976931348623159e308",
        "1e-400",
        "4.9e-324",
        "2.4e-324",
        "2.2250738585072011e-308",
        "0.1",
        "0.30000000000000004",
        "9007199254740993",
        "9007199254740993.0",
        "1e99999999999999999999",
        "1e-99999999999999999999",
        "0." + std::string(400, '0') + "1",
        "1" + std::string(400, '0'),
        "NaN",
        "-NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "0x10",
        "1_000",
        // literals and syntax
        "true",
        "false",
        "True",
        "tru",
        "nul",
        "[true,false,null]",
        "[1,]",
        "{\"a\":1,}",
        "[,1]",
        "[1 2]",
        "{\"a\" 1}",
        "{\"a\":}",
        "{a:1}",
        "{'a':1}",
        "['a']",
        "{\"a\":1 \"b\":2}",
        "[1]//c",
        "/*c*/[1]",
        "[1,/*c*/2]",
        "#[1]",
        "[",
        "]",
        "{",
        "{\"a\":[}",
        "[1}",
        // strings: escapes, surrogates, control characters, UTF-8
        "[\"\\uD800\"]",
        "[\"\\uDBFF\"]",
        "[\"\\uDC00\"]",
        "[\"\\uDFFF\"]",
        "[\"\\uD800\\uDC00\"]",
        "[\"\\uD83D\\uDE00\"]",
        "[\"\\uD800x\"]",
        "[\"\\uD800\\u0041\"]",
        "[\"\\uD800\\uD800\"]",
        "[\"\\uDC00\\uD800\"]",
        "[\"a\\uDC00b\"]",
        "{\"\\uDC00\":1}",
        "[\"\\uD7FF\\uE000\"]",
        "[\"\xED\x9F\xBF\"]",
        "[\"\xED\xA0\x80\"]",
        "[\"\xC0\x80\"]",
        "[\"\xC1\xBF\"]",
        "[\"\xE0\x80\x80\"]",
        "[\"\xF0\x80\x80\x80\"]",
        "[\"\xF4\x8F\xBF\xBF\"]",
        "[\"\xF4\x90\x80\x80\"]",
        "[\"\xF5\x80\x80\x80\"]",
        "[\"\xFF\"]",
        "[\"\x80\"]",
        "[\"\xE2\x82\"]",
        "[\"\xE2\x82\xAC\"]",
        "[\xE2\x82\xAC]",
        "[\"\\u0000\"]",
        "[\"\0\"]"s,
        "[\"\t\"]",
        "[\"\n\"]",
        "[\"\x1F\"]",
        "[\"\x7F\"]",
        "[\"\\x41\"]",
        "[\"\\/\\b\\f\"]",
        "[\"\\u00e9\\u00E9\"]",
        "[\"\\u12\"]",
        "[\"\\u12G4\"]",
        "[\"\\'\"]",
        "[\"abc]",
        // objects: duplicate keys, nesting
        "{\"a\":1,\"a\":2}",
        "{\"a\":{\"b\":1},\"a\":[2]}",
        "{\"a\":[1,{\"b\":null}],\"c\":{}}",
        "[[[[[]]]],{\"\":{\"\":[\"\"]}}]",
        std::string(10'000, '[') + std::string(10'000, ']'),
        std::string(10'000, '[') + std::string(9'999, ']'),
    };
    for (const auto& text : cases)
        EXPECT_TRUE(parsesLikeNlohmann(text));
}

// Random edits of real request and response bodies (a fixed seed, so a failure repeats):
// whatever they break or keep, both parsers agree.
TEST(WaypointJson, RandomEditsParseLikeNlohmann) {
    const std::vector<std::string> seeds = {
        R"({"model":"gpt-4o","messages":[{"role":"user","content":"h\u00e9llo \"w\"\n"}],)"
        R"("max_tokens":32,"temperature":0.7,"stream":true,"stop":null,"n":-1})",
        R"({"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1e1,"total_tokens":19}})",
        "[\"\xE2\x82\xAC\\uD83D\\uDE00\",1.5e-3,-0,true,{\"a\":[{}]}]",
    };
    const std::string alphabet =
        "{}[],:\"\\u0123456789abcdefABCDEF.eE+-tfnrl \t\n\r/*\xED\xA0\xC0"
        "\x80\xBF\xEF\xBB\xF4\x90"s +
        '\0';
    std::mt19937 random(20261127);
    for (int round = 0; round < 20'000; ++round) {
        std::string text = seeds[random() % seeds.size()];
        for (int n = 1 + int(random() % 3); n > 0; --n) {
            const std::size_t at = random() % (text.size() + 1);
            const char c = alphabet[random() % alphabet.size()];
            switch (random() % 3) {
                case 0:
                    text.insert(at, 1, c);
                    break;
                case 1:
                    if (at < text.size())
                        text.erase(at, 1);
                    break;
                default:
                    if (at < text.size())
                        text[at] = c;
            }
        }
        ASSERT_TRUE(parsesLikeNlohmann(text)) << "round " << round;
    }
}

}  // namespace
}  // namespace sluice::waypoint
