package actors

import (
	"bufio"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"os"

	"golang.org/x/image/draw"
	"golang.org/x/image/webp"

	"github.com/shoal-chat/shoal/storage"
)

// DefaultThumbnailMaxPixels bounds the pixel count of an image shoal will
// decode to thumbnail it: decoding allocates 4 bytes a pixel whatever the
// file's size, so a small file declaring huge dimensions (a decompression
// bomb) is refused from its header alone.
const DefaultThumbnailMaxPixels = 32 << 20

// thumbPreset is one of the sizes thumbnails are made in. Requests are
// rounded up to a preset, so each image has a bounded set of thumbnails.
type thumbPreset struct {
	w, h int
	crop bool
}

// The spec's recommended sizes, plus larger ones so that requests up to
// 1280 pixels get a thumbnail at least as large as asked.
var thumbPresets = []thumbPreset{
	{32, 32, true}, {96, 96, true}, {320, 320, true}, {640, 640, true},
	{320, 240, false}, {640, 480, false}, {800, 600, false}, {1280, 960, false},
}

func (p thumbPreset) key() string {
	m := "scale"
	if p.crop {
		m = "crop"
	}
	return fmt.Sprintf("%dx%d-%s", p.w, p.h, m)
}

// pickThumbPreset returns the smallest preset of the method that is at
// least w×h, or the largest of the method when none is.
func pickThumbPreset(w, h int, crop bool) thumbPreset {
	var largest thumbPreset
	for _, p := range thumbPresets {
		if p.crop != crop {
			continue
		}
		if p.w >= w && p.h >= h {
			return p
		}
		largest = p
	}
	return largest
}

type thumbResult struct {
	original    bool // serve the source: it is no larger than asked
	contentType string
	path        string // the staged thumbnail
	sum         string
	size        int64
	width       int
	height      int
}

var thumbFormats = map[string]struct {
	contentType string
	decode      func(io.Reader) (image.Image, error)
	config      func(io.Reader) (image.Config, error)
}{
	"jpeg": {"image/jpeg", jpeg.Decode, jpeg.DecodeConfig},
	"png":  {"image/png", png.Decode, png.DecodeConfig},
	"gif":  {"image/gif", gif.Decode, gif.DecodeConfig}, // the first frame
	"webp": {"image/webp", webp.Decode, webp.DecodeConfig},
}

// sniffImage tells the format from the file's first bytes, never from the
// content type the uploader claimed.
func sniffImage(head []byte) string {
	switch {
	case len(head) >= 3 && head[0] == 0xff && head[1] == 0xd8 && head[2] == 0xff:
		return "jpeg"
	case len(head) >= 8 && string(head[:8]) == "\x89PNG\r\n\x1a\n":
		return "png"
	case len(head) >= 6 && (string(head[:6]) == "GIF87a" || string(head[:6]) == "GIF89a"):
		return "gif"
	case len(head) >= 12 && string(head[:4]) == "RIFF" && string(head[8:12]) == "WEBP":
		return "webp"
	}
	return ""
}

func errNoThumbnail() *MatrixError {
	return Errorf(http.StatusBadRequest, "M_UNKNOWN", "cannot generate a thumbnail for this content")
}

// makeThumbnail makes a thumbnail of the image file src in preset p and
// writes it to a new file in stagingDir. Only JPEG, PNG, GIF (first frame)
// and WebP are read; images of more than maxPixels pixels are refused with
// 413 M_TOO_LARGE. The output is JPEG for opaque images, PNG otherwise.
func makeThumbnail(src, stagingDir string, p thumbPreset, maxPixels int64) (res thumbResult, err error) {
	if maxPixels <= 0 {
		maxPixels = DefaultThumbnailMaxPixels
	}
	defer func() {
		// The decoders read untrusted bytes: should one of them panic,
		// that is a file we cannot thumbnail, not a crashed actor.
		if p := recover(); p != nil {
			res, err = thumbResult{}, errNoThumbnail()
		}
	}()
	f, err := os.Open(src)
	if err != nil {
		return res, fmt.Errorf("thumbnail: open blob: %w", err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	head, _ := br.Peek(12)
	format := sniffImage(head)
	codec, ok := thumbFormats[format]
	if !ok {
		return res, errNoThumbnail()
	}
	cfg, err := codec.config(br)
	if err != nil || cfg.Width <= 0 || cfg.Height <= 0 {
		return res, errNoThumbnail()
	}
	if int64(cfg.Width)*int64(cfg.Height) > maxPixels {
		return res, Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "image is too large to thumbnail")
	}
	// Source rectangle and output size: crop takes the largest centred
	// region of the preset's aspect ratio; both methods never upscale.
	sw, sh := cfg.Width, cfg.Height
	srcRect := image.Rect(0, 0, sw, sh)
	var dw, dh int
	if p.crop {
		cw, ch := sw, sh
		if sw*p.h > sh*p.w {
			cw = max(1, sh*p.w/p.h)
		} else {
			ch = max(1, sw*p.h/p.w)
		}
		x0, y0 := (sw-cw)/2, (sh-ch)/2
		srcRect = image.Rect(x0, y0, x0+cw, y0+ch)
		dw, dh = min(p.w, cw), min(p.h, ch)
		if cw <= p.w && ch <= p.h && cw == sw && ch == sh {
			return thumbResult{original: true, contentType: codec.contentType}, nil
		}
		if cw > p.w {
			dh = max(1, ch*p.w/cw)
			dw = p.w
		}
	} else {
		if sw <= p.w && sh <= p.h {
			return thumbResult{original: true, contentType: codec.contentType}, nil
		}
		if sw*p.h > sh*p.w {
			dw, dh = p.w, max(1, sh*p.w/sw)
		} else {
			dw, dh = max(1, sw*p.h/sh), p.h
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return res, fmt.Errorf("thumbnail: %w", err)
	}
	img, err := codec.decode(bufio.NewReader(f))
	if err != nil {
		return res, errNoThumbnail()
	}
	srcRect = srcRect.Add(img.Bounds().Min).Intersect(img.Bounds())
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	var from image.Image = img
	if srcRect.Dx() > 4*dw && srcRect.Dy() > 4*dh {
		// A cheap first pass to twice the size, then a good filter: the
		// Catmull-Rom kernel's cost grows with the reduction factor.
		mid := image.NewRGBA(image.Rect(0, 0, 2*dw, 2*dh))
		draw.ApproxBiLinear.Scale(mid, mid.Bounds(), img, srcRect, draw.Src, nil)
		from, srcRect = mid, mid.Bounds()
	}
	draw.CatmullRom.Scale(dst, dst.Bounds(), from, srcRect, draw.Src, nil)

	out, err := storage.CreateStaged(stagingDir)
	if err != nil {
		return res, fmt.Errorf("thumbnail: %w", err)
	}
	defer func() {
		if err != nil {
			out.Close()
			_ = os.Remove(out.Name())
		}
	}()
	bw := bufio.NewWriter(out)
	ct := "image/png"
	if dst.Opaque() {
		ct = "image/jpeg"
		err = jpeg.Encode(bw, dst, &jpeg.Options{Quality: 85})
	} else {
		err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(bw, dst)
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = out.Close()
	}
	if err != nil {
		return res, fmt.Errorf("thumbnail: encode: %w", err)
	}
	sum, size, err := storage.HashFile(out.Name())
	if err != nil {
		return res, fmt.Errorf("thumbnail: %w", err)
	}
	return thumbResult{contentType: ct, path: out.Name(), sum: sum, size: size, width: dw, height: dh}, nil
}
