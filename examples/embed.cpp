// embed.cpp - using libllamamoe from C++17 through a small RAII wrapper.
//
//   embed -m MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS]
//
// The first half of this file is a header-only-style wrapper (copy it into a header of your own):
//   lmoe_cpp::Error    an exception with the library's message (lmoe_last_error) and its status;
//   lmoe_cpp::Model    owns an lmoe_model       (std::unique_ptr with a deleter calling lmoe_model_free);
//   lmoe_cpp::Context  owns an lmoe_context     (... lmoe_context_free); generate() takes any callable;
//   lmoe_cpp::Sampler  owns an lmoe_sampler     (... lmoe_sampler_free).
// The objects are movable, not copyable, and free themselves in reverse order of declaration.
// The second half is a main that loads a model, streams a story through a lambda and, for a
// mixture-of-experts model, prints how often each expert was chosen.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "llamamoe.h"

namespace lmoe_cpp {

// ---- errors: every failing call becomes an exception carrying the library's detail ----

class Error : public std::runtime_error {
public:
    Error(lmoe_status status, const std::string &what)
        : std::runtime_error(what + ": " + lmoe_last_error()), status_(status) {}
    lmoe_status status() const noexcept { return status_; }
    const char *status_string() const noexcept { return lmoe_status_string(status_); }

private:
    lmoe_status status_;
};

// Throws Error if st is not LMOE_OK. lmoe_last_error() is read at once, on the failing thread.
inline void check(lmoe_status st, const std::string &what) {
    if (st != LMOE_OK) throw Error(st, what);
}

// ---- deleters: the library's destructors, for std::unique_ptr ----

struct ModelDeleter {
    void operator()(lmoe_model *m) const noexcept { lmoe_model_free(m); }
};
struct ContextDeleter {
    void operator()(lmoe_context *c) const noexcept { lmoe_context_free(c); }
};
struct SamplerDeleter {
    void operator()(lmoe_sampler *s) const noexcept { lmoe_sampler_free(s); }
};

// ---- Model: immutable once loaded; may be shared by contexts on several threads ----

class Model {
public:
    explicit Model(const std::string &path) {
        lmoe_model *m = nullptr;
        check(lmoe_model_load(path.c_str(), nullptr, &m), "loading " + path);
        ptr_.reset(m);
    }
    lmoe_model *get() const noexcept { return ptr_.get(); }

    lmoe_model_info info() const {
        lmoe_model_info i{};
        check(lmoe_model_get_info(get(), &i, sizeof i), "lmoe_model_get_info");
        return i;
    }
    // A metadata value as text, or "" if the key is absent.
    std::string meta(const char *key) const {
        std::string s(64, '\0');
        size_t len = 0;
        lmoe_status st = lmoe_model_meta_string(get(), key, s.data(), s.size(), &len);
        if (st == LMOE_ERR_INVALID_ARGUMENT) return "";
        if (st == LMOE_ERR_BUFFER_TOO_SMALL) { // *len says how long: try once more
            s.assign(len + 1, '\0');        // + 1 for the NUL the library writes
            st = lmoe_model_meta_string(get(), key, s.data(), s.size(), &len);
        }
        check(st, std::string("lmoe_model_meta_string ") + key);
        s.resize(len);
        return s;
    }

private:
    std::unique_ptr<lmoe_model, ModelDeleter> ptr_;
};

// ---- Sampler ----

class Sampler {
public:
    explicit Sampler(float temperature = 1.0f, uint64_t seed = 42) {
        lmoe_sampler_params p;
        check(lmoe_sampler_default_params(&p, sizeof p), "lmoe_sampler_default_params");
        p.temperature = temperature;
        p.seed = seed;
        lmoe_sampler *s = nullptr;
        check(lmoe_sampler_create(&p, &s), "lmoe_sampler_create");
        ptr_.reset(s);
    }
    lmoe_sampler *get() const noexcept { return ptr_.get(); }

private:
    std::unique_ptr<lmoe_sampler, SamplerDeleter> ptr_;
};

// ---- Context: one sequence; the Model must outlive it ----

class Context {
public:
    explicit Context(const Model &model, int32_t n_threads = 0) : model_(&model) {
        lmoe_context_params p;
        check(lmoe_context_default_params(&p, sizeof p), "lmoe_context_default_params");
        p.n_threads = n_threads;
        lmoe_context *c = nullptr;
        check(lmoe_context_create(model.get(), &p, &c), "lmoe_context_create");
        ptr_.reset(c);
    }
    lmoe_context *get() const noexcept { return ptr_.get(); }

    // Generates from prompt, calling on_text(std::string_view text) for each piece. on_text may
    // return void (go on) or bool (true: stop). The callable reaches the C callback through the
    // user pointer; an exception it throws is caught at the C boundary (it must never unwind
    // through the library) and rethrown here once lmoe_generate has returned.
    template <class F>
    lmoe_generate_result generate(Sampler &sampler, std::string_view prompt, int32_t max_tokens,
                                  F &&on_text) {
        struct Bridge {
            std::remove_reference_t<F> *fn;
            std::exception_ptr error;
        } bridge{&on_text, nullptr};

        lmoe_generate_params p;
        check(lmoe_generate_default_params(&p, sizeof p), "lmoe_generate_default_params");
        p.max_tokens = max_tokens;
        p.user = &bridge;
        p.on_text = [](void *user, const char *text, size_t len, lmoe_token) -> int {
            auto *b = static_cast<Bridge *>(user);
            try {
                std::string_view piece(text, len);
                if constexpr (std::is_void_v<std::invoke_result_t<decltype(*b->fn), std::string_view>>) {
                    (*b->fn)(piece);
                    return 0;
                } else {
                    return (*b->fn)(piece) ? 1 : 0;
                }
            } catch (...) {
                b->error = std::current_exception();
                return 1; // stop generating; rethrown below
            }
        };
        lmoe_generate_result r{};
        lmoe_status st = lmoe_generate(get(), sampler.get(), prompt.data(), prompt.size(), &p, &r,
                                       sizeof r);
        if (bridge.error) std::rethrow_exception(bridge.error);
        check(st, "lmoe_generate");
        return r;
    }

    // How often each expert was chosen: counts[layer * n_expert + expert]. Dense models: empty.
    std::vector<uint64_t> expert_counts() const {
        lmoe_model_info i = model_->info();
        if (i.n_expert == 0) return {};
        std::vector<uint64_t> counts(static_cast<size_t>(i.n_layer) * static_cast<size_t>(i.n_expert));
        check(lmoe_context_expert_counts(get(), counts.data(), counts.size()),
              "lmoe_context_expert_counts");
        return counts;
    }

private:
    const Model *model_;
    std::unique_ptr<lmoe_context, ContextDeleter> ptr_;
};

} // namespace lmoe_cpp

// ------------------------------------------------------------------------------------------------

static void usage(const char *argv0) {
    std::fprintf(stderr, "usage: %s -m MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS]\n", argv0);
}

int main(int argc, char **argv) {
    std::string model_path, prompt = "Once upon a time";
    long max_tokens = 64, n_threads = 0;
    for (int i = 1; i < argc; i += 2) {
        std::string_view a = argv[i];
        if (i + 1 >= argc || a.size() != 2 || a[0] != '-') {
            usage(argv[0]);
            return 2;
        }
        const char *v = argv[i + 1];
        char *end = nullptr;
        switch (a[1]) {
        case 'm': model_path = v; break;
        case 'p': prompt = v; break;
        case 'n': max_tokens = std::strtol(v, &end, 10); break;
        case 't': n_threads = std::strtol(v, &end, 10); break;
        default: usage(argv[0]); return 2;
        }
        if (end && (*end != '\0' || end == v)) {
            usage(argv[0]);
            return 2;
        }
    }
    if (model_path.empty() || max_tokens < 0 || max_tokens > INT32_MAX || n_threads < 0) {
        usage(argv[0]);
        return 2;
    }

    try {
        // Declaration order = construction order; destruction runs the other way, so the
        // context is freed before the model it uses.
        lmoe_cpp::Model model(model_path);
        lmoe_cpp::Context ctx(model, static_cast<int32_t>(n_threads));
        lmoe_cpp::Sampler sampler(0.8f, 42);
        std::fprintf(stderr, "model: %s, architecture %s\n", model_path.c_str(),
                     model.meta("general.architecture").c_str());

        std::string text; // the lambda captures by reference: it collects and streams the text
        std::fputs(prompt.c_str(), stdout);
        auto r = ctx.generate(sampler, prompt, static_cast<int32_t>(max_tokens),
                              [&text](std::string_view piece) {
                                  text += piece;
                                  std::fwrite(piece.data(), 1, piece.size(), stdout);
                                  std::fflush(stdout);
                              });
        std::printf("\n\n%u prompt tokens in %.1f ms, %u generated in %.1f ms, %zu bytes of text\n",
                    r.n_prompt_tokens, r.prompt_ms, r.n_generated, r.generate_ms, text.size());

        lmoe_model_info info = model.info();
        if (info.n_expert == 0) {
            std::printf("dense model (%s): no routing statistics\n", info.architecture);
            return 0;
        }
        std::printf("MoE model: %d experts per layer, %d per token; %llu of %llu parameters active\n",
                    info.n_expert, info.n_expert_used,
                    static_cast<unsigned long long>(info.n_params_active),
                    static_cast<unsigned long long>(info.n_params));
        std::vector<uint64_t> counts = ctx.expert_counts();
        for (int32_t l = 0; l < info.n_layer; l++) {
            uint64_t total = 0;
            for (int32_t e = 0; e < info.n_expert; e++) total += counts[static_cast<size_t>(l * info.n_expert + e)];
            std::printf("layer %d:", l);
            for (int32_t e = 0; e < info.n_expert; e++) {
                uint64_t c = counts[static_cast<size_t>(l * info.n_expert + e)];
                std::printf("  e%d %5.1f%%", e, total ? 100.0 * static_cast<double>(c) / static_cast<double>(total) : 0.0);
            }
            std::printf("\n");
        }
        return 0;
    } catch (const lmoe_cpp::Error &e) {
        std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.status_string());
        return 1;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
