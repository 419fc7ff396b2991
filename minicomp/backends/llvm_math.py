"""Vectorizable float32 exp, tanh and erf, written in LLVM IR.

libm's ``expf``/``tanhf``/``erff`` are opaque calls that stop LLVM's loop
vectorizer. These versions are straight-line code (selects, no branches), so a
loop that calls them vectorizes; they are inlined into each kernel.

- exp: Cody-Waite range reduction ``x = n ln2 + r`` and a degree-6 polynomial
  (the Cephes coefficients), scaled by ``2^n`` built in the exponent bits;
  about 1 ulp over the float range.
- tanh: an odd Taylor polynomial below 0.3 (where ``1 - 2/(e^2x + 1)`` would
  cancel), the exp form above, with the sign restored.
- erf: the Maclaurin series below 0.5, ``1 - erfc`` above, with erfc from
  the Chebyshev fit in Numerical Recipes (fractional error below 1.2e-7).
"""

from __future__ import annotations

from minicomp.backends.llvm_codegen import float_literal


def _f(v: float) -> str:
    return float_literal(v, "float")


EXPF = f"""
define internal float @mc_expf(float %x) alwaysinline {{
  %lo = call float @llvm.maxnum.f32(float %x, float {_f(-87.33654)})
  %c = call float @llvm.minnum.f32(float %lo, float {_f(88.72283905206835)})
  %t = fmul float %c, {_f(1.44269504088896341)}
  %n = call float @llvm.rint.f32(float %t)
  %a = fmul float %n, {_f(0.693359375)}
  %r0 = fsub float %c, %a
  %b = fmul float %n, {_f(-2.12194440e-4)}
  %r = fsub float %r0, %b
  %p0 = fmul float %r, {_f(1.9875691500e-4)}
  %p1 = fadd float %p0, {_f(1.3981999507e-3)}
  %p2 = fmul float %p1, %r
  %p3 = fadd float %p2, {_f(8.3334519073e-3)}
  %p4 = fmul float %p3, %r
  %p5 = fadd float %p4, {_f(4.1665795894e-2)}
  %p6 = fmul float %p5, %r
  %p7 = fadd float %p6, {_f(1.6666665459e-1)}
  %p8 = fmul float %p7, %r
  %p9 = fadd float %p8, {_f(5.0000001201e-1)}
  %r2 = fmul float %r, %r
  %q0 = fmul float %p9, %r2
  %q1 = fadd float %q0, %r
  %q2 = fadd float %q1, {_f(1.0)}
  %ni = fptosi float %n to i32
  %nh = ashr i32 %ni, 1
  %nl = sub i32 %ni, %nh
  %eh = add i32 %nh, 127
  %el = add i32 %nl, 127
  %bh = shl i32 %eh, 23
  %bl = shl i32 %el, 23
  %sh = bitcast i32 %bh to float
  %sl = bitcast i32 %bl to float
  %y0 = fmul float %q2, %sh
  %y = fmul float %y0, %sl
  %big = fcmp ogt float %x, {_f(88.72283905206835)}
  %y1 = select i1 %big, float {float_literal(float('inf'), 'float')}, float %y
  %small = fcmp olt float %x, {_f(-87.33654)}
  %y2 = select i1 %small, float {_f(0.0)}, float %y1
  %nan = fcmp uno float %x, %x
  %y3 = select i1 %nan, float %x, float %y2
  ret float %y3
}}
"""

TANHF = f"""
define internal float @mc_tanhf(float %x) alwaysinline {{
  %ax = call float @llvm.fabs.f32(float %x)
  %x2 = fmul float %ax, %ax
  %s0 = fmul float %x2, {_f(-1382.0 / 155925.0)}
  %s1 = fadd float %s0, {_f(62.0 / 2835.0)}
  %s2 = fmul float %s1, %x2
  %s3 = fadd float %s2, {_f(-17.0 / 315.0)}
  %s4 = fmul float %s3, %x2
  %s5 = fadd float %s4, {_f(2.0 / 15.0)}
  %s6 = fmul float %s5, %x2
  %s7 = fadd float %s6, {_f(-1.0 / 3.0)}
  %s8 = fmul float %s7, %x2
  %s9 = fmul float %s8, %ax
  %small = fadd float %s9, %ax
  %two = fmul float %ax, {_f(2.0)}
  %e = call float @mc_expf(float %two)
  %d = fadd float %e, {_f(1.0)}
  %q = fdiv float {_f(2.0)}, %d
  %large = fsub float {_f(1.0)}, %q
  %use_small = fcmp olt float %ax, {_f(0.3)}
  %m = select i1 %use_small, float %small, float %large
  %r = call float @llvm.copysign.f32(float %m, float %x)
  ret float %r
}}
"""

_ERFC = [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
         0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277]


def _erff() -> str:
    lines = ["define internal float @mc_erff(float %x) alwaysinline {",
             "  %ax = call float @llvm.fabs.f32(float %x)",
             # Maclaurin: 2/sqrt(pi) * (x - x^3/3 + x^5/10 - x^7/42 + x^9/216 - x^11/1320 + x^13/9360)
             "  %x2 = fmul float %ax, %ax"]
    coeffs = [1.0 / 9360.0, -1.0 / 1320.0, 1.0 / 216.0, -1.0 / 42.0, 1.0 / 10.0, -1.0 / 3.0]
    acc = _f(coeffs[0])
    for k, c in enumerate(coeffs[1:]):
        lines.append(f"  %m{k} = fmul float {acc}, %x2")
        lines.append(f"  %a{k} = fadd float %m{k}, {_f(c)}")
        acc = f"%a{k}"
    lines += [f"  %tm = fmul float {acc}, %x2",
              "  %tp = fadd float %tm, " + _f(1.0),
              "  %tx = fmul float %tp, %ax",
              f"  %small = fmul float %tx, {_f(1.1283791670955126)}",
              # erfc(z) = t * exp(-z^2 + poly(t)), t = 1 / (1 + z/2)
              f"  %h = fmul float %ax, {_f(0.5)}",
              f"  %den = fadd float %h, {_f(1.0)}",
              f"  %t = fdiv float {_f(1.0)}, %den"]
    acc = _f(_ERFC[-1])
    for k, c in enumerate(reversed(_ERFC[:-1])):
        lines.append(f"  %e{k} = fmul float {acc}, %t")
        lines.append(f"  %f{k} = fadd float %e{k}, {_f(c)}")
        acc = f"%f{k}"
    lines += ["  %nz2 = fneg float %x2",
              f"  %arg = fadd float %nz2, {acc}",
              "  %ex = call float @mc_expf(float %arg)",
              "  %erfc = fmul float %t, %ex",
              f"  %large = fsub float {_f(1.0)}, %erfc",
              f"  %use_small = fcmp olt float %ax, {_f(0.5)}",
              "  %m = select i1 %use_small, float %small, float %large",
              "  %r = call float @llvm.copysign.f32(float %m, float %x)",
              "  ret float %r", "}"]
    return "\n".join(lines) + "\n"


ERFF = _erff()

# bfloat16 <-> float: the upper 16 bits of a float, rounded to nearest even
# (NaN stays a quiet NaN).
TO_BF16 = """
define internal i16 @mc_to_bf16(float %x) alwaysinline {
  %b = bitcast float %x to i32
  %up = lshr i32 %b, 16
  %lsb = and i32 %up, 1
  %bias = add i32 %lsb, 32767
  %r = add i32 %b, %bias
  %hi = lshr i32 %r, 16
  %nan = fcmp uno float %x, %x
  %sel = select i1 %nan, i32 32704, i32 %hi
  %h = trunc i32 %sel to i16
  ret i16 %h
}
"""

FROM_BF16 = """
define internal float @mc_from_bf16(i16 %h) alwaysinline {
  %w = zext i16 %h to i32
  %b = shl i32 %w, 16
  %x = bitcast i32 %b to float
  ret float %x
}
"""

# name -> (function text, functions it calls, intrinsic declarations it needs)
HELPERS = {
    "mc_expf": (EXPF, [], ["declare float @llvm.maxnum.f32(float, float)",
                           "declare float @llvm.minnum.f32(float, float)", "declare float @llvm.rint.f32(float)"]),
    "mc_tanhf": (TANHF, ["mc_expf"], ["declare float @llvm.fabs.f32(float)",
                                      "declare float @llvm.copysign.f32(float, float)"]),
    "mc_erff": (ERFF, ["mc_expf"], ["declare float @llvm.fabs.f32(float)",
                                    "declare float @llvm.copysign.f32(float, float)"]),
    "mc_to_bf16": (TO_BF16, [], []),
    "mc_from_bf16": (FROM_BF16, [], []),
}
