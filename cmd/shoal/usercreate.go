package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// userCreate registers an account on a running node through the
// Synapse-compatible shared-secret endpoint, the same one existing tooling
// (register_new_matrix_user) uses.
func userCreate(args []string, stdout io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("user create", flag.ContinueOnError)
	url := fs.String("url", "", "client API base URL of a running node (default: from the configuration's client_listen)")
	user := fs.String("user", "", "localpart of the new user (required)")
	password := fs.String("password", getenv("SHOAL_PASSWORD"), "password (env SHOAL_PASSWORD; '-' reads one line from stdin)")
	admin := fs.Bool("admin", false, "make the user a server admin")
	secret := fs.String("shared-secret", "", "registration shared secret (default: from the configuration or the data dir)")
	configPath := fs.String("config", getenv("SHOAL_CONFIG"), "YAML configuration file of the node")
	dataDir := fs.String("data-dir", "", "the node's data dir, to find its generated shared secret")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *user == "" {
		return fmt.Errorf("--user is required")
	}
	if *password == "-" {
		line, err := readLine(os.Stdin)
		if err != nil {
			return fmt.Errorf("read password: %w", err)
		}
		*password = line
	}
	if *password == "" {
		return fmt.Errorf("--password (or SHOAL_PASSWORD) is required")
	}
	var cfgArgs []string
	if *configPath != "" {
		cfgArgs = append(cfgArgs, "--config", *configPath)
	}
	if *dataDir != "" {
		cfgArgs = append(cfgArgs, "--data-dir", *dataDir)
	}
	cfg, err := loadConfig(cfgArgs, getenv)
	if err != nil {
		return err
	}
	if *url == "" {
		*url = "http://" + cfg.ClientListen
	}
	if *secret == "" {
		*secret = cfg.RegistrationSharedSecret
	}
	if *secret == "" {
		data, err := os.ReadFile(filepath.Join(cfg.DataDir, "registration_shared_secret"))
		if err != nil {
			return fmt.Errorf("no shared secret given and none found in the data dir: %w", err)
		}
		*secret = strings.TrimSpace(string(data))
	}
	userID, err := sharedSecretRegister(strings.TrimRight(*url, "/"), *secret, *user, *password, *admin)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %s\n", userID)
	return nil
}

func readLine(r io.Reader) (string, error) {
	var b strings.Builder
	buf := make([]byte, 1)
	for {
		n, err := r.Read(buf)
		if n == 1 {
			if buf[0] == '\n' {
				break
			}
			b.WriteByte(buf[0])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return strings.TrimRight(b.String(), "\r"), nil
}

func sharedSecretRegister(base, secret, user, password string, admin bool) (string, error) {
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(base + "/_synapse/admin/v1/register")
	if err != nil {
		return "", fmt.Errorf("get nonce: %w", err)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&nonce)
	resp.Body.Close()
	if err != nil || nonce.Nonce == "" {
		return "", fmt.Errorf("get nonce: status %d", resp.StatusCode)
	}
	role := "notadmin"
	if admin {
		role = "admin"
	}
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(nonce.Nonce + "\x00" + user + "\x00" + password + "\x00" + role))
	body, _ := json.Marshal(map[string]any{
		"nonce": nonce.Nonce, "username": user, "password": password, "admin": admin,
		"mac": hex.EncodeToString(mac.Sum(nil)),
	})
	resp, err = client.Post(base+"/_synapse/admin/v1/register", "application/json", bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("register: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		UserID  string `json:"user_id"`
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&out)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("register: %d %s: %s", resp.StatusCode, out.ErrCode, out.Error)
	}
	return out.UserID, nil
}
