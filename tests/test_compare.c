/* test_compare.c — compare.h: the distance of a quantized model's logits row from the
 * 16-bit one's, and the statistics over positions.
 *
 * The expected KL values come from a direct computation in Python with the math module
 * (double precision, no llmint8 code), for rows of three tokens:
 *   def kl(r, q):
 *       lr = math.log(sum(math.exp(x) for x in r)); lq = math.log(sum(math.exp(x) for x in q))
 *       return sum(math.exp(a - lr) * ((a - lr) - (b - lq)) for a, b in zip(r, q))
 *   kl([1.0, 2.0, 0.5], [1.25, 1.5, 0.75])  = 0.06847890289539094
 *   kl([-2.0, 0.25, 0.0], [1.0, 0.0, 0.5])  = 0.5549671332604208
 * Every input is exact in float32, so both sides start from the same numbers; the sums may
 * round differently (we see 7e-15 relative), hence the 1e-13 relative tolerance. */
#include "compare.h"
#include "test_util.h"

#define KL_A 0.06847890289539094
#define KL_B 0.5549671332604208
#define TOL 1e-13

static bool close_rel(double got, double want, double rel) { return fabs(got - want) <= rel * fabs(want); }

static void test_rows(void) {
    const float ref_a[3] = {1.0f, 2.0f, 0.5f}, q_a[3] = {1.25f, 1.5f, 0.75f};
    RowDistance d = compare_rows(ref_a, q_a, 3);
    CHECK(close_rel(d.kl, KL_A, TOL), "kl %.17g, Python %.17g", d.kl, KL_A);
    CHECK(d.same_top, "both rows peak at token 1");
    CHECK(d.max_abs_delta == 0.5, "max |delta| %.17g, expected 0.5 (token 1)", d.max_abs_delta);

    const float ref_b[3] = {-2.0f, 0.25f, 0.0f}, q_b[3] = {1.0f, 0.0f, 0.5f};
    d = compare_rows(ref_b, q_b, 3);
    CHECK(close_rel(d.kl, KL_B, TOL), "kl %.17g, Python %.17g", d.kl, KL_B);
    CHECK(!d.same_top, "token 1 against token 0");
    CHECK(d.max_abs_delta == 3.0, "max |delta| %.17g, expected 3 (token 0)", d.max_abs_delta);

    /* equal rows: exactly 0, whatever their size */
    float big[1000];
    for (int i = 0; i < 1000; i++) big[i] = (float)((i * 7919) % 1000) / 37.0f - 13.0f;
    d = compare_rows(big, big, 1000);
    CHECK(d.kl == 0.0 && d.same_top && d.max_abs_delta == 0.0, "equal rows: kl %g, max |delta| %g", d.kl,
          d.max_abs_delta);

    /* adding a constant to every logit leaves the distribution as it is: KL ~ 0, top agrees */
    float shifted[3] = {ref_a[0] + 4.0f, ref_a[1] + 4.0f, ref_a[2] + 4.0f};
    d = compare_rows(ref_a, shifted, 3);
    CHECK(fabs(d.kl) < 1e-15 && d.same_top && d.max_abs_delta == 4.0, "shifted row: kl %g, max |delta| %g", d.kl,
          d.max_abs_delta);

    /* a NaN shows up instead of vanishing */
    float with_nan[3] = {1.0f, NAN, 0.5f};
    d = compare_rows(ref_a, with_nan, 3);
    CHECK(isnan(d.kl) && isnan(d.max_abs_delta), "NaN logit: kl %g, max |delta| %g", d.kl, d.max_abs_delta);
}

static void test_stats(void) {
    CompareStats s = {0};
    CHECK(isnan(compare_stats_kl_mean(&s)) && isnan(compare_stats_kl_percentile(&s, 99)) &&
          isnan(compare_stats_top1(&s)), "no positions: NaN");

    const float ref_a[3] = {1.0f, 2.0f, 0.5f}, q_a[3] = {1.25f, 1.5f, 0.75f};
    const float ref_b[3] = {-2.0f, 0.25f, 0.0f}, q_b[3] = {1.0f, 0.0f, 0.5f};
    CHECK(compare_stats_add(&s, ref_b, q_b, 3) == 0, "add");
    CHECK(compare_stats_add(&s, ref_a, q_a, 3) == 0, "add");
    CHECK(compare_stats_add(&s, ref_a, ref_a, 3) == 0, "add");
    CHECK(s.count == 3, "3 positions, got %ld", s.count);
    CHECK(close_rel(compare_stats_kl_mean(&s), (KL_B + KL_A + 0.0) / 3, TOL), "mean %.17g",
          compare_stats_kl_mean(&s));
    CHECK(close_rel(compare_stats_top1(&s), 2.0 / 3.0, TOL), "top-1 %.17g", compare_stats_top1(&s));
    CHECK(s.max_abs_delta == 3.0, "max |delta| %g", s.max_abs_delta);
    /* nearest rank on the sorted {0, KL_A, KL_B}: 50% -> the 2nd, 99% and 100% -> the 3rd, 1% -> the 1st */
    CHECK(close_rel(compare_stats_kl_percentile(&s, 50), KL_A, TOL), "p50 %.17g", compare_stats_kl_percentile(&s, 50));
    CHECK(close_rel(compare_stats_kl_percentile(&s, 99), KL_B, TOL), "p99 %.17g", compare_stats_kl_percentile(&s, 99));
    CHECK(close_rel(compare_stats_kl_percentile(&s, 100), KL_B, TOL), "max %.17g",
          compare_stats_kl_percentile(&s, 100));
    CHECK(compare_stats_kl_percentile(&s, 1) == 0.0, "p1 %.17g", compare_stats_kl_percentile(&s, 1));
    /* sorting for the percentile does not change the mean */
    CHECK(close_rel(compare_stats_kl_mean(&s), (KL_B + KL_A) / 3, TOL), "mean after sorting %.17g",
          compare_stats_kl_mean(&s));

    /* 200 positions with KL 0, 1, ..., 199 (via add_distance): p99 is the 198th = 197 */
    compare_stats_free(&s);
    for (int i = 199; i >= 0; i--) {
        RowDistance d = {.kl = i, .same_top = i % 2 == 0, .max_abs_delta = i / 10.0};
        CHECK(compare_stats_add_distance(&s, &d) == 0, "add_distance");
    }
    CHECK(compare_stats_kl_mean(&s) == 99.5, "mean %g", compare_stats_kl_mean(&s));
    CHECK(compare_stats_kl_percentile(&s, 99) == 197.0, "p99 %g", compare_stats_kl_percentile(&s, 99));
    CHECK(compare_stats_top1(&s) == 0.5, "top-1 %g", compare_stats_top1(&s));
    CHECK(s.max_abs_delta == 19.9, "max |delta| %g", s.max_abs_delta);
    compare_stats_free(&s);
    CHECK(s.kl == NULL && s.count == 0, "freed");
}

int main(void) {
    test_rows();
    test_stats();
    return test_finish("compare");
}
