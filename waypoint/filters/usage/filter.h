#pragma once

#include <memory>
#include <optional>
#include <string_view>

#include "waypoint/filters/filter.h"
#include "waypoint/filters/usage/config.h"
#include "waypoint/tokenizer/encoding.h"

namespace sluice::waypoint::usage {

// Token accounting: the pre-admission estimate (BPE over the prompt, plus the request's output
// allowance) and reconciliation with what the backend reports. For streams it asks the backend
// for a final usage chunk (stream_options.include_usage) and, when the client did not ask for
// it, removes that chunk again before it reaches the client.
class UsageFilter : public HttpFilter {
  public:
    UsageFilter(UsageConfig config, std::shared_ptr<const tokenizer::Encoding> cl100k,
                std::shared_ptr<const tokenizer::Encoding> o200k);

    std::string_view name() const override { return "usage"; }
    std::optional<LocalReply> onRequest(RequestContext& ctx) override;
    bool onStreamEvent(RequestContext& ctx, std::string_view data, std::string& raw) override;
    void onResponseBody(RequestContext& ctx, std::string_view body) override;

    // Prompt tokens of an OpenAI request body, as OpenAI's cookbook counts chat messages
    // (3 tokens per message, 1 per name, 3 to prime the reply).
    std::uint64_t estimatePrompt(const RequestContext& ctx) const;

  private:
    const tokenizer::Encoding& encodingFor(const std::string& model) const;

    UsageConfig config_;
    std::shared_ptr<const tokenizer::Encoding> cl100k_;
    std::shared_ptr<const tokenizer::Encoding> o200k_;
};

// Where a member can go into the text of a JSON object: just past its opening brace (after a
// byte order mark and whitespace, if any); nullopt when the text does not start with one.
std::optional<std::size_t> firstMemberOffset(std::string_view text);

}  // namespace sluice::waypoint::usage
