package actors

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

func TestPickThumbPreset(t *testing.T) {
	for _, c := range []struct {
		w, h int
		crop bool
		want string
	}{
		{1, 1, true, "32x32-crop"},
		{33, 10, true, "96x96-crop"},
		{96, 96, true, "96x96-crop"},
		{500, 100, true, "640x640-crop"},
		{5000, 5000, true, "640x640-crop"},
		{100, 100, false, "320x240-scale"},
		{320, 241, false, "640x480-scale"},
		{801, 10, false, "1280x960-scale"},
		{9000, 9000, false, "1280x960-scale"},
	} {
		if got := pickThumbPreset(c.w, c.h, c.crop).key(); got != c.want {
			t.Errorf("%dx%d crop=%v: %s, want %s", c.w, c.h, c.crop, got, c.want)
		}
	}
}

func writeTestJPEG(tb testing.TB, dir string, w, h int) string {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), uint8(x + y), 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(dir, "src.jpg")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestMakeThumbnailSizes(t *testing.T) {
	dir := t.TempDir()
	src := writeTestJPEG(t, dir, 300, 100)
	for _, c := range []struct {
		p      thumbPreset
		w, h   int
		isOrig bool
	}{
		{thumbPreset{32, 32, true}, 32, 32, false},
		{thumbPreset{96, 96, true}, 96, 96, false},
		{thumbPreset{320, 320, true}, 100, 100, false}, // cropped to the aspect, never upscaled
		{thumbPreset{320, 240, false}, 0, 0, true},
		{thumbPreset{100, 100, false}, 100, 33, false},
	} {
		res, err := makeThumbnail(src, dir, c.p, 0)
		if err != nil {
			t.Fatalf("%s: %v", c.p.key(), err)
		}
		if res.original != c.isOrig {
			t.Fatalf("%s: original=%v", c.p.key(), res.original)
		}
		if res.original {
			continue
		}
		f, err := os.Open(res.path)
		if err != nil {
			t.Fatal(err)
		}
		cfg, format, err := image.DecodeConfig(f)
		f.Close()
		if err != nil || cfg.Width != c.w || cfg.Height != c.h || format != "jpeg" {
			t.Errorf("%s: %dx%d %s %v, want %dx%d", c.p.key(), cfg.Width, cfg.Height, format, err, c.w, c.h)
		}
	}
}

// BenchmarkThumbnail makes a 320x240 thumbnail of a 1920x1080 JPEG: decode,
// scale, encode, hash.
func BenchmarkThumbnail(b *testing.B) {
	dir := b.TempDir()
	src := writeTestJPEG(b, dir, 1920, 1080)
	for b.Loop() {
		res, err := makeThumbnail(src, dir, thumbPreset{320, 240, false}, 0)
		if err != nil {
			b.Fatal(err)
		}
		_ = os.Remove(res.path)
	}
}

// BenchmarkThumbnailCropPNG makes a 96x96 crop of a 1024x1024 PNG.
func BenchmarkThumbnailCropPNG(b *testing.B) {
	dir := b.TempDir()
	img := image.NewNRGBA(image.Rect(0, 0, 1024, 1024))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		b.Fatal(err)
	}
	src := filepath.Join(dir, "src.png")
	if err := os.WriteFile(src, buf.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		res, err := makeThumbnail(src, dir, thumbPreset{96, 96, true}, 0)
		if err != nil {
			b.Fatal(err)
		}
		_ = os.Remove(res.path)
	}
}

// FuzzThumbnail feeds arbitrary bytes to the thumbnailer: it must refuse
// them with a Matrix error or make a thumbnail, never panic.
func FuzzThumbnail(f *testing.F) {
	dir := f.TempDir()
	var b bytes.Buffer
	_ = png.Encode(&b, image.NewGray(image.Rect(0, 0, 40, 40)))
	f.Add(b.Bytes())
	b.Reset()
	_ = jpeg.Encode(&b, image.NewGray(image.Rect(0, 0, 40, 40)), nil)
	f.Add(b.Bytes())
	f.Add([]byte("GIF89a\x28\x00\x28\x00\x00\x00\x00;"))
	f.Add([]byte("RIFF\x10\x00\x00\x00WEBPVP8L\x04\x00\x00\x00\x2f\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		src := filepath.Join(dir, "fuzz")
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := makeThumbnail(src, dir, thumbPreset{32, 32, true}, 1<<20)
		if err != nil {
			if _, ok := err.(*MatrixError); !ok {
				t.Fatalf("non-Matrix error %v", err)
			}
			return
		}
		if res.path != "" {
			_ = os.Remove(res.path)
		}
	})
}
