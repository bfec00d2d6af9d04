// waypoint/json: RapidJSON reads with nlohmann's accept/reject rules into a document that holds
// what nlohmann's would, so swapping the parser changes no answer the waypoint gives.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "waypoint/json/document.h"

namespace sluice::waypoint {
namespace {

using namespace std::string_literals;

// Same value and the same kind at every node, a float apart from an integer and a float's sign
// (nlohmann's == calls 1.0 and 1 equal, and 0.0 and -0.0); signed and unsigned integers are one
// kind here (see parsesLikeNlohmann). Without recursion: the documents nest 10k deep.
bool sameDocument(const nlohmann::json& first, const nlohmann::json& second) {
    auto kind = [](const nlohmann::json& v) {
        return v.is_number_integer() ? nlohmann::json::value_t::number_integer : v.type();
    };
    std::vector<std::pair<const nlohmann::json*, const nlohmann::json*>> todo{{&first, &second}};
    while (!todo.empty()) {
        const auto [a, b] = todo.back();
        todo.pop_back();
        if (kind(*a) != kind(*b) || a->size() != b->size() || (!a->is_structured() && *a != *b))
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

// json::Document accepts what nlohmann::json::parse accepts, and what it holds is what
// nlohmann reads: written out and read back by nlohmann, the same document. (RapidJSON keeps one
// kind for a non-negative integer, so -0, nlohmann's signed 0, is written as 0: integers of
// either sign are one kind in the comparison.)
::testing::AssertionResult parsesLikeNlohmann(const std::string& text) {
    const auto ours = json::Document::parse(text);
    const auto theirs = nlohmann::json::parse(text, nullptr, false);
    if (ours.has_value() == theirs.is_discarded())
        return ::testing::AssertionFailure()
               << (ours ? "accepted" : "rejected")
               << " by RapidJSON, not by nlohmann: " << ::testing::PrintToString(text);
    if (!ours)
        return ::testing::AssertionSuccess();
    const std::string written = ours->write();
    const auto again = nlohmann::json::parse(written, nullptr, false);
    if (again.is_discarded() || !sameDocument(again, theirs))
        return ::testing::AssertionFailure()
               << "json::Document wrote " << ::testing::PrintToString(written) << " for "
               << ::testing::PrintToString(text);
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

// The filters read the last of a repeated key, as nlohmann and Python's json keep it, and a
// body written out has only that one: a backend that keeps the first reads the same.
TEST(WaypointJsonDocument, ReadsTheLastOfARepeatedKeyAndWritesOnlyThatOne) {
    const std::string text =
        R"({"model":"a","stream":true,"model":"b","n":-3,"x":[1.5,null,{"k":1,"k":2}]})";
    auto doc = json::Document::parse(text);
    ASSERT_TRUE(doc);
    EXPECT_EQ(json::text(*json::member(doc->root(), "model")), "b");
    EXPECT_TRUE(json::flagSet(doc->root(), "stream"));
    EXPECT_FALSE(json::flagSet(doc->root(), "nope"));
    EXPECT_EQ(json::member(doc->root(), "n")->GetInt64(), -3);
    EXPECT_EQ(json::member(doc->root()["x"], "y"), nullptr);  // not an object
    EXPECT_EQ(doc->write(), R"({"stream":true,"model":"b","n":-3,"x":[1.5,null,{"k":2}]})");
    EXPECT_FALSE(json::Document::parse(R"({"model":"a",})"));
    EXPECT_FALSE(json::Document::parse(""));
}

TEST(WaypointJsonDocument, TellsARepeatedKey) {
    auto repeated = [](const std::string& text) {
        return json::repeatsKey(json::Document::parse(text)->root());
    };
    EXPECT_FALSE(repeated(R"({"model":"a","stream":true})"));
    EXPECT_TRUE(repeated(R"({"model":"a","stream":true,"model":"b"})"));
    EXPECT_FALSE(repeated(R"({"a":{"k":1},"b":{"k":1}})"));  // the top level only
    EXPECT_FALSE(repeated("[1,1]"));
    EXPECT_FALSE(repeated("{}"));
    // Past 16 members it sorts instead of comparing pairs.
    std::string many = "{";
    for (int i = 0; i < 40; ++i)
        many += "\"k" + std::to_string(i) + "\":0,";
    EXPECT_FALSE(repeated(many + "\"last\":0}"));
    EXPECT_TRUE(repeated(many + "\"k7\":1}"));
}

TEST(WaypointJsonDocument, CanonicalTextIgnoresKeyOrderAndRepeatsAndDropsOneMember) {
    auto a = json::Document::parse(R"({"input":["x",{"k":1,"j":2}],"model":"e","user":"u1"})");
    auto b = json::Document::parse(
        R"({"model":"z","user":"u2","input":["x",{"j":2,"k":1}],"model":"e"})");
    auto c = json::Document::parse(R"({"model":"e","input":["x",{"j":2,"k":2}]})");
    ASSERT_TRUE(a && b && c);
    EXPECT_EQ(a->canonical("user"), R"({"input":["x",{"j":2,"k":1}],"model":"e"})");
    EXPECT_EQ(a->canonical("user"), b->canonical("user"));
    EXPECT_NE(a->canonical("user"), c->canonical("user"));
    EXPECT_NE(a->canonical(), b->canonical());  // the users differ
    // Only the top level's `user` is dropped.
    auto nested = json::Document::parse(R"({"input":{"user":1}})");
    EXPECT_EQ(nested->canonical("user"), R"({"input":{"user":1}})");
}

// A body nests as deep as its size allows; writing it must not take a stack frame per level
// (a request that makes the waypoint write its body out would crash a worker).
TEST(WaypointJsonDocument, WritesDeepNestingWithoutRecursion) {
    const std::size_t depth = 1'000'000;
    const std::string text =
        R"({"model":"m","a":)" + std::string(depth, '[') + std::string(depth, ']') + "}";
    auto doc = json::Document::parse(text);
    ASSERT_TRUE(doc);
    EXPECT_EQ(doc->write(), text);
    EXPECT_EQ(doc->canonical().size(), text.size());
}

}  // namespace
}  // namespace sluice::waypoint
