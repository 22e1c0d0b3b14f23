/* One LSTM time step's elementwise work in a single pass, for the CPU backend.
 *
 * rows R (= D directions x B batch), H hidden; every pointer is a dense fp32 [R, X] row block.
 * The backend calls these once per step, between its recurrent products; torch's own ops did the
 * same work in 5-6 passes of 2-7 µs dispatch each (docs/cpu-backend.md says what it measured).
 *
 * exp is Cephes' single-precision range reduction and polynomial (about 1 ulp), written so that the
 * compiler vectorizes it: no branches, no libm calls. NaN propagates (no fmin/fmax clamps).
 */
#include <stdint.h>
#include <string.h>

static inline float exp_f(float x) {
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    x = x < -87.3365447505531f ? -87.3365447505531f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round(x / ln 2) */
    float r = x - n * 0.693359375f;  /* ln 2 in two parts: r = x - n ln 2 without cancellation */
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;  /* 2^n */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

static inline float tanh_f(float x) {
    /* |x| < 0.625: an odd polynomial (1 - 2/(e^2|x| + 1) loses digits there); else through exp */
    float a = x < 0.0f ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float big = 1.0f - 2.0f / (exp_f(2.0f * a) + 1.0f);
    big = x < 0.0f ? -big : big;
    return a < 0.625f ? small : big;
}

/* the activations, for the tests: sigmoid, tanh and exp of n values */
void rnnkit_activations(const float *restrict x, float *restrict s, float *restrict t,
                        float *restrict e, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        s[k] = sigmoid_f(x[k]);
        t[k] = tanh_f(x[k]);
        e[k] = exp_f(x[k]);
    }
}

/* One row of the forward: p [4H] the recurrent product and x [4H] the input's part, whose sum is the
 * pre-activations (i, f, g, o); cp [H] c_{t-1} -> a [4H] activated gates, c [H] = f c_{t-1} + i g,
 * h [H] = o tanh(c). keep: cell zoneout's probability at inference, where the gates are its
 * expectation i' = (1 - keep) i, f' = keep + (1 - keep) f (rnnkit/zoneout.py); 0 in training, where
 * they are i and f, the same bits (x * 1 and 0 + x, x >= 0, are x) */
static inline void lstm_row(const float *restrict p, const float *restrict x, const float *restrict cp,
                            float *restrict a, float *restrict c, float *restrict h, int64_t H,
                            float keep) {
    for (int64_t j = 0; j < H; j++) {
        float i = (1.0f - keep) * sigmoid_f(p[j] + x[j]);
        float f = keep + (1.0f - keep) * sigmoid_f(p[H + j] + x[H + j]);
        float g = tanh_f(p[2 * H + j] + x[2 * H + j]), o = sigmoid_f(p[3 * H + j] + x[3 * H + j]);
        float cn = f * cp[j] + i * g;
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = o;
        c[j] = cn;
        h[j] = o * tanh_f(cn);
    }
}

/* Forward, every row a real step: pre [R, 4H] h_{t-1} W_hh^T, gx [R, 4H] the input projection,
 * c_prev [R, H] -> gates [R, 4H], c, h [R, H]. keep: 0 in training; cell zoneout's probability at
 * inference, for its expectation (lstm_row). Training's loop has lstm_row with the constant 0, which
 * the compiler folds away: with keep a variable, or the test inside the row loop (gcc merged the two
 * calls), a step at R 128, H 128 measured 10-30% slower, with the same bits */
void rnnkit_lstm_fwd_step(const float *restrict pre, const float *restrict gx,
                          const float *restrict c_prev, float *restrict gates, float *restrict c,
                          float *restrict h, int64_t R, int64_t H, float keep) {
    if (keep == 0.0f)
        for (int64_t r = 0; r < R; r++)
            lstm_row(pre + r * 4 * H, gx + r * 4 * H, c_prev + r * H, gates + r * 4 * H, c + r * H,
                     h + r * H, H, 0.0f);
    else
        for (int64_t r = 0; r < R; r++)
            lstm_row(pre + r * 4 * H, gx + r * 4 * H, c_prev + r * H, gates + r * 4 * H, c + r * H,
                     h + r * H, H, keep);
}

/* Forward with a mask: valid [R] (1: a real step). The carried states c_state, h_state [R, H] are
 * read and, on valid rows, replaced; a masked row keeps them and writes zeros to gates, c and h. */
void rnnkit_lstm_fwd_step_masked(const float *restrict pre, const float *restrict gx,
                                 const uint8_t *restrict valid,
                                 float *restrict c_state, float *restrict h_state,
                                 float *restrict gates, float *restrict c, float *restrict h,
                                 int64_t R, int64_t H) {
    for (int64_t r = 0; r < R; r++) {
        float *a = gates + r * 4 * H, *cr = c + r * H, *hr = h + r * H;
        if (!valid[r]) {
            memset(a, 0, 4 * H * sizeof(float));
            memset(cr, 0, H * sizeof(float));
            memset(hr, 0, H * sizeof(float));
            continue;
        }
        lstm_row(pre + r * 4 * H, gx + r * 4 * H, c_state + r * H, a, cr, hr, H, 0.0f);
        memcpy(c_state + r * H, cr, H * sizeof(float));
        memcpy(h_state + r * H, hr, H * sizeof(float));
    }
}

/* Backward of one step.
 * gates [R, 4H] activated i, f, g, o; c, c_prev [R, H] the step's cell state and the one before;
 * dh [R, H] the gradient carried into h_t, dy [R, H] its direct gradient (NULL: none);
 * dc [R, H] the gradient carried into c_t, replaced by the one into c_{t-1} (valid rows only);
 * -> dpre [R, 4H] gradient of the pre-activations; rec_h, rec_c [R, H] (NULL: not asked) the total
 * dL/dh_t and dL/dc_t. valid [R] or NULL: a masked row writes zeros and leaves dc alone. */
void rnnkit_lstm_bwd_step(const float *restrict gates, const float *restrict c,
                          const float *restrict c_prev, const float *restrict dh,
                          const float *restrict dy, const uint8_t *restrict valid,
                          float *restrict dc, float *restrict dpre, float *restrict rec_h,
                          float *restrict rec_c, int64_t R, int64_t H) {
    for (int64_t r = 0; r < R; r++) {
        float *d = dpre + r * 4 * H;
        float *rh = rec_h ? rec_h + r * H : NULL, *rc = rec_c ? rec_c + r * H : NULL;
        if (valid && !valid[r]) {
            memset(d, 0, 4 * H * sizeof(float));
            if (rh) memset(rh, 0, H * sizeof(float));
            if (rc) memset(rc, 0, H * sizeof(float));
            continue;
        }
        const float *a = gates + r * 4 * H, *cr = c + r * H, *cp = c_prev + r * H;
        const float *dhr = dh + r * H, *dyr = dy ? dy + r * H : NULL;
        float *dcr = dc + r * H;
        for (int64_t j = 0; j < H; j++) {
            float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
            float dht = dyr ? dhr[j] + dyr[j] : dhr[j];
            float tc = tanh_f(cr[j]);
            float dct = dcr[j] + dht * (o * (1.0f - tc * tc));
            d[j] = dct * (g * (i - i * i));
            d[H + j] = dct * (cp[j] * (f - f * f));
            d[2 * H + j] = dct * (i - i * g * g);
            d[3 * H + j] = dht * (tc * (o - o * o));
            dcr[j] = dct * f;
            if (rh) rh[j] = dht;
            if (rc) rc[j] = dct;
        }
    }
}

/* The LSTM backward's gate gradients of K steps of one direction into the gate-major layout that its
 * weight gradients read: src [K, B, G] (step k's block at src + k * src_step, rows of G) -> dst
 * element (gate column q, step k, row b) at dst + q * dst_gate + k * dst_step + b (dst_step < 0 for
 * the reverse direction, whose loop steps run back in time). Whole 16 x 16 tiles go through a local
 * buffer, read and written a row at a time (pixel MNIST's 784 steps, B 128, G 512, one thread of an
 * AMD EPYC with AVX-512, 8 interleaved rounds: min 34 against 47 ms, median 44 against 70 copying
 * each element straight across; a noisy VM); the edges element-wise */
enum { GM_TILE = 16 };

static void gate_major_tile(const float *restrict s, float *restrict d, int64_t G, int64_t dst_gate) {
    float t[GM_TILE][GM_TILE];
    for (int b = 0; b < GM_TILE; b++)
        for (int q = 0; q < GM_TILE; q++)
            t[q][b] = s[b * G + q];
    for (int q = 0; q < GM_TILE; q++)
        memcpy(d + q * dst_gate, t[q], sizeof t[q]);
}

void rnnkit_gate_major(const float *restrict src, float *restrict dst, int64_t K, int64_t B, int64_t G,
                       int64_t src_step, int64_t dst_gate, int64_t dst_step) {
    int64_t B_full = B - B % GM_TILE, G_full = G - G % GM_TILE;
    for (int64_t k = 0; k < K; k++) {
        const float *s = src + k * src_step;
        float *d = dst + k * dst_step;
        for (int64_t b0 = 0; b0 < B_full; b0 += GM_TILE)
            for (int64_t q0 = 0; q0 < G_full; q0 += GM_TILE)
                gate_major_tile(s + b0 * G + q0, d + q0 * dst_gate + b0, G, dst_gate);
        for (int64_t q = 0; q < G; q++)  /* the edges: rows past B_full, columns past G_full */
            for (int64_t b = q < G_full ? B_full : 0; b < B; b++)
                d[q * dst_gate + b] = s[b * G + q];
    }
}

/* Zoneout's mask (rnnkit/zoneout.py, `sample`): out[k] = 1 with probability threshold / 2^32, n
 * units. Counter-based: SplitMix64's output number j of the stream seeded with key gives the units j
 * (its low 32 bits) and half + j (its high 32 bits), so every unit is its own draw, whatever the
 * loop's order, and the loop vectorizes (torch.rand and a compare took 82 ms for pixel MNIST's
 * 12.8 M units a step, one thread of an AMD EPYC) */
static inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void rnnkit_bernoulli(uint8_t *restrict out, int64_t n, uint64_t key, uint64_t threshold) {
    int64_t half = (n + 1) / 2;
    uint8_t *restrict high = out + half;
    for (int64_t j = 0; j < n / 2; j++) {
        uint64_t z = splitmix64(key + (uint64_t)(j + 1) * 0x9E3779B97F4A7C15ull);
        out[j] = (z & 0xFFFFFFFFull) < threshold;
        high[j] = (z >> 32) < threshold;
    }
    if (n & 1) {
        uint64_t z = splitmix64(key + (uint64_t)half * 0x9E3779B97F4A7C15ull);
        out[half - 1] = (z & 0xFFFFFFFFull) < threshold;
    }
}

/* Zoneout's gates (rnnkit/zoneout.py): out [N, 4H] = gx [N, 4H] with the input gate's pre-activation
 * lowered by shift and the forget gate's raised where zoned [N, H] is 1, in one pass (torch's ops made
 * a float mask of gx's size and a second pass over it) */
void rnnkit_zone_gates(const float *restrict gx, const uint8_t *restrict zoned, float *restrict out,
                       int64_t N, int64_t H, float shift) {
    for (int64_t n = 0; n < N; n++) {
        const float *x = gx + n * 4 * H;
        const uint8_t *z = zoned + n * H;
        float *o = out + n * 4 * H;
        for (int64_t j = 0; j < H; j++) {
            float s = z[j] ? shift : 0.0f;
            o[j] = x[j] + -s;
            o[H + j] = x[H + j] + s;
        }
        memcpy(o + 2 * H, x + 2 * H, 2 * H * sizeof(float));
    }
}
