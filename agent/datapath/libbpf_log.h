#pragma once

#include <string>

#include "agent/datapath/error.h"

namespace sluice::datapath {

// libbpf reports verifier logs and load failures only through its global print callback. While a
// LibbpfLogCapture lives, everything libbpf prints on this thread (warnings and info, which carry
// the verifier log) is collected so it can go into the Error; otherwise warnings go to the
// process log. Not reentrant: one capture per thread at a time.
class LibbpfLogCapture {
  public:
    LibbpfLogCapture();
    ~LibbpfLogCapture();
    LibbpfLogCapture(const LibbpfLogCapture&) = delete;
    LibbpfLogCapture& operator=(const LibbpfLogCapture&) = delete;

    const std::string& text() const { return text_; }

  private:
    std::string text_;
    std::string* previous_;
};

// The Error for a failed bpf_object load of `object` with libbpf's captured `log`: VerifierRejected
// when the log holds a verifier log (its last kMaxLogInError bytes, where the reason is, go into
// the message), LoadFailed otherwise.
Error load_error(const std::string& object, int err, const std::string& log);
inline constexpr size_t kMaxLogInError = 16 * 1024;

// Installs the print callback (once per process).
void install_libbpf_logger();

}  // namespace sluice::datapath
