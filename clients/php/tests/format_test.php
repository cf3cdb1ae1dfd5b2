<?php
/**
 * The client's Python formatting (Governor\PyFormat) against Python itself, on many values: repr()
 * (the messages show values as Python's repr does) and json.dumps (the payloads are Python's byte
 * for byte, so their sizes, and the limit, are too).
 */

declare(strict_types=1);

namespace GovernorTest;

use Governor\PyFormat;

function randomFloats(int $n): array
{
    $out = [0.0, -0.0, 1.0, -1.0, 0.1, 1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5, 5e-324, 2.2250738585072014e-308,
        1.7976931348623157e308, 0.3, 2.0 / 3.0, 100.0, 1e22, 1e23, 123456789.125, NAN, INF, -INF];
    for ($i = 0; $i < $n; $i++) {
        $f = unpack('E', random_bytes(8))[1];  // any bits: every exponent
        $out[] = is_nan($f) ? 1.5 : $f;
        $out[] = mt_rand() / mt_getrandmax() * 10 ** mt_rand(-8, 20);  // the usual magnitudes
        $out[] = round(mt_rand() / 1000, mt_rand(0, 4));
    }
    return $out;
}

function randomStrings(int $n): array
{
    $out = ["it's", 'say "hi"', "both '\"", "\\", "\t\n\r\x0b\x0c\x00\x1f\x7f", "\u{85}\u{a0}\u{ad}\u{2028}\u{FEFF}",
        "\u{E000}\u{10FFFF}\u{1F600}\u{0378}", "é\u{200b}\u{3000}x", '', ' ', "\u{1680}"];
    $ranges = [[0, 0x7f], [0x80, 0x2ff], [0x300, 0x3000], [0xE000, 0xFFFF], [0x10000, 0x10FFFF], [0, 0x40]];
    for ($i = 0; $i < $n; $i++) {
        $s = '';
        for ($j = mt_rand(0, 12); $j > 0; $j--) {
            [$lo, $hi] = $ranges[mt_rand(0, count($ranges) - 1)];
            $cp = mt_rand($lo, $hi);
            if ($cp >= 0xD800 && $cp <= 0xDFFF) {
                continue;
            }
            $s .= \Governor\mb_chr_compat($cp);
        }
        $out[] = $s;
    }
    return $out;
}

function test_repr_of_floats_and_strings_is_pythons(Env $env): void
{
    $values = array_merge(randomFloats(700), randomStrings(700), [null, true, false, 0, -5, PHP_INT_MAX, [], [1, 'a'],
        ['k' => [1.5, null]], new \stdClass(), (object)['a' => ['b' => 'c']], [[]]]);
    $python = Python::call(['op' => 'repr', 'values' => $values]);
    foreach ($values as $i => $v) {
        same($python[$i], PyFormat::repr($v), 'repr of ' . show(Python::pack($v)));
    }
}

function test_json_is_pythons_byte_for_byte(Env $env): void
{
    $values = array_merge(randomFloats(300), randomStrings(300), [
        ['a/b', "</script>", 1e16, [], new \stdClass(), ['x' => [1, 2.5, ['y' => null]]], true, false, null],
        ['nested' => [[[[]]]], '' => 'empty key', 5 => 'int key'], PHP_INT_MAX, -PHP_INT_MAX - 1,
        [NAN], ['x' => INF],
    ]);
    $python = Python::call(['op' => 'dumps', 'values' => $values]);
    foreach ($values as $i => $v) {
        try {
            $mine = ['json' => PyFormat::json($v)];
        } catch (\UnexpectedValueException $e) {
            $mine = ['error' => $e->getMessage()];
        }
        same($python[$i], $mine, 'json of ' . show(Python::pack($v)));
    }
}
