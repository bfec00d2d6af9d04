// libFuzzer target for the policy and registry parsers (and the compiler over what they
// accept): any input must give diagnostics, never a crash, hang or sanitizer report.
#include <cstddef>
#include <cstdint>
#include <string>

#include "policies/compiler.h"
#include "policies/parser.h"
#include "policies/registry.h"
#include "policies/validator.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    namespace pol = sluice::policies;
    std::vector<pol::Diagnostic> diags;
    const pol::SourceFile file{"fuzz.yaml", std::string(reinterpret_cast<const char*>(data), size)};
    const auto docs = pol::parse_yaml(file, diags);
    const auto set = pol::parse_policies(docs, diags);
    const auto more = pol::validate(set);
    const auto registry = pol::parse_registry(docs, diags);
    if (!pol::has_errors(more) && set.size() < 64 && registry.pods.size() < 64) {
        const auto compiled = pol::compile(set, registry);
        (void)compiled.kernel_json();
    }
    for (const auto& d : diags)
        (void)d.to_string();
    return 0;
}
