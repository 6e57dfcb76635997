/* streaming.c - stream generated text to stdout, and stop early when a time budget runs out or
 * when the user presses a key.
 *
 *   streaming -m MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS] [-b SECONDS]
 *
 * Shows:
 *   - lmoe_generate's on_text callback: each piece is written and flushed as soon as it is final;
 *   - two ways to stop early, both driven by the same check:
 *       on_text returning nonzero   stops between generated tokens (LMOE_STOP_CALLBACK),
 *       the context's abort_fn      stops between layers, so even a long prompt evaluation is
 *                                   interrupted (lmoe_generate then returns LMOE_ERR_ABORTED);
 *   - polling the keyboard without blocking: if stdin is a terminal it is put into
 *     non-canonical, no-echo mode (restored at exit, also after Ctrl-C) and polled with select()
 *     and a zero timeout; if stdin is not a terminal (a pipe, /dev/null) keys are ignored.
 * Why generation stopped is printed on stderr, so stdout holds only the text.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "llamamoe.h"

/* ---- the terminal: non-canonical mode while we run, the saved settings back at exit ---- */

static struct termios saved_termios;
static int termios_saved = 0;

static void restore_terminal(void) {
    if (termios_saved) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_termios);
        termios_saved = 0;
    }
}

/* Ctrl-C still raises SIGINT (ISIG stays on); the handler only sets a flag that the stop check
 * reads, so the program leaves through its normal path and restores the terminal. */
static volatile sig_atomic_t got_signal = 0;
static void on_signal(int sig) { got_signal = sig; }

/* Returns 1 if key polling is on (stdin is a terminal and could be switched), else 0. */
static int setup_keyboard(void) {
    if (!isatty(STDIN_FILENO)) return 0; /* not a terminal: no keys to poll */
    if (tcgetattr(STDIN_FILENO, &saved_termios) != 0) return 0;
    struct termios raw = saved_termios;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO); /* byte at a time, no echo; ISIG kept for Ctrl-C */
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) != 0) return 0;
    termios_saved = 1;
    atexit(restore_terminal); /* also covers an exit() from anywhere */
    return 1;
}

/* Nonzero if a key has been pressed (and consumes it). Never blocks: select() with a zero timeout. */
static int key_pressed(void) {
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(STDIN_FILENO, &fds);
    struct timeval zero = {0, 0};
    if (select(STDIN_FILENO + 1, &fds, NULL, NULL, &zero) <= 0) return 0;
    char c;
    return read(STDIN_FILENO, &c, 1) == 1;
}

/* ---- the stop check shared by on_text and abort_fn ---- */

typedef enum { RUNNING, STOP_BUDGET, STOP_KEY, STOP_SIGNAL } stop_cause;

typedef struct {
    struct timespec deadline; /* CLOCK_MONOTONIC time at which the budget runs out */
    int poll_keys;            /* 1 if stdin is a terminal in non-canonical mode */
    stop_cause cause;         /* set once, by the first check that says stop */
    size_t bytes_out;         /* text bytes written so far */
} stream_state;

static double seconds_until(const struct timespec *t) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(t->tv_sec - now.tv_sec) + (double)(t->tv_nsec - now.tv_nsec) / 1e9;
}

/* Nonzero when generation should stop; remembers why. */
static int should_stop(stream_state *s) {
    if (s->cause != RUNNING) return 1;
    if (got_signal) s->cause = STOP_SIGNAL;
    else if (seconds_until(&s->deadline) <= 0) s->cause = STOP_BUDGET;
    else if (s->poll_keys && key_pressed()) s->cause = STOP_KEY;
    return s->cause != RUNNING;
}

/* abort_fn: called by lmoe_eval between layers, on the thread that called lmoe_generate. */
static int abort_check(void *user) { return should_stop(user); }

/* on_text: write the piece, flush it so it shows at once, then check whether to go on. */
static int on_text(void *user, const char *text, size_t len, lmoe_token token) {
    (void)token;
    stream_state *s = user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    s->bytes_out += len;
    return should_stop(s);
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s -m MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS] [-b SECONDS]\n"
            "  streams text to stdout; stops after SECONDS (default 10) or when a key is pressed\n",
            argv0);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = "Once upon a time";
    long max_tokens = 256, n_threads = 0;
    double budget = 10.0;
    for (int i = 1; i < argc; i += 2) { /* options come as pairs: -x VALUE */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!v || a[0] != '-' || a[1] == '\0' || a[2] != '\0') { usage(argv[0]); return 2; }
        switch (a[1]) {
        case 'm': model_path = v; break;
        case 'p': prompt = v; break;
        case 'n': max_tokens = strtol(v, &end, 10); break;
        case 't': n_threads = strtol(v, &end, 10); break;
        case 'b': budget = strtod(v, &end); break;
        default: usage(argv[0]); return 2;
        }
        if (end && (*end != '\0' || end == v)) { usage(argv[0]); return 2; }
    }
    if (!model_path || max_tokens < 0 || max_tokens > INT32_MAX || n_threads < 0 || !(budget > 0)) {
        usage(argv[0]);
        return 2;
    }

    /* Signals first, so a Ctrl-C at any point after raw mode is on ends through the normal path. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    stream_state state = {.cause = RUNNING};
    lmoe_model *model = NULL;
    lmoe_context *ctx = NULL;
    lmoe_sampler *sampler = NULL;
    int rc = 1;

    lmoe_status st = lmoe_model_load(model_path, NULL, &model);
    if (st != LMOE_OK) goto fail;

    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_threads = (int32_t)n_threads;
    cp.abort_fn = abort_check; /* interrupts lmoe_eval between layers, prompt included */
    cp.abort_user = &state;
    st = lmoe_context_create(model, &cp, &ctx);
    if (st != LMOE_OK) goto fail;

    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0.8f;
    st = lmoe_sampler_create(&sp, &sampler);
    if (st != LMOE_OK) goto fail;

    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = (int32_t)max_tokens;
    gp.on_text = on_text;
    gp.user = &state;

    state.poll_keys = setup_keyboard();
    if (state.poll_keys) fprintf(stderr, "[press any key to stop]\n");
    /* The budget covers prompt evaluation and generation, starting now. */
    clock_gettime(CLOCK_MONOTONIC, &state.deadline);
    state.deadline.tv_sec += (time_t)budget;
    state.deadline.tv_nsec += (long)((budget - (double)(time_t)budget) * 1e9);
    if (state.deadline.tv_nsec >= 1000000000L) {
        state.deadline.tv_sec++;
        state.deadline.tv_nsec -= 1000000000L;
    }

    fputs(prompt, stdout); /* generated text continues the prompt */
    fflush(stdout);
    lmoe_generate_result res;
    memset(&res, 0, sizeof res); /* stays zero if the call fails early */
    st = lmoe_generate(ctx, sampler, prompt, strlen(prompt), &gp, &res, sizeof res);
    putchar('\n');
    fflush(stdout);
    restore_terminal();

    /* An abort we asked for is a normal way to stop, not an error. */
    if (st == LMOE_ERR_ABORTED && state.cause != RUNNING) st = LMOE_OK;
    if (st != LMOE_OK) goto fail;

    const char *why = "?";
    switch (state.cause) {
    case STOP_BUDGET: why = "the time budget ran out"; break;
    case STOP_KEY: why = "a key was pressed"; break;
    case STOP_SIGNAL: why = "interrupted by a signal"; break;
    case RUNNING:
        switch (res.stop_reason) {
        case LMOE_STOP_EOS: why = "the model ended the text (EOS)"; break;
        case LMOE_STOP_BOS: why = "the model started a new text (BOS)"; break;
        case LMOE_STOP_STRING: why = "a stop string"; break;
        case LMOE_STOP_MAX_TOKENS: why = "the maximum number of tokens (-n)"; break;
        case LMOE_STOP_CALLBACK: why = "the callback"; break;
        case LMOE_STOP_NONE: break;
        }
        break;
    }
    fprintf(stderr, "stopped: %s", why);
    if (state.cause == RUNNING || res.stop_reason != LMOE_STOP_NONE)
        fprintf(stderr, " (%u prompt tokens, %u generated, %g s budget)\n", res.n_prompt_tokens,
                res.n_generated, budget);
    else /* aborted inside lmoe_eval: res says nothing useful */
        fprintf(stderr, " (during evaluation, %g s budget)\n", budget);
    rc = 0;
    goto out;

fail:
    restore_terminal();
    fprintf(stderr, "error: %s (%s)\n", lmoe_last_error(), lmoe_status_string(st));
out:
    lmoe_sampler_free(sampler); /* each free accepts NULL */
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return rc;
}
